"""Simulator of the EPG-1 electroporation pulse generator (shared/icd/epg-1.md).

The host talks ASCII lines; the simulator answers every line with exactly one reply
line and sends ``!`` event lines of its own. Pulse timing is the device's timer,
modelled (ICD, physics): pulse k starts at
``t_k = round((k-1) * P * (1 + ppm * 1e-6)) + D_k + J_k`` microseconds after the trigger
and ``!PULSE`` reports exactly that ``t_k``. The event loop is only asked to reach each
``t_k`` (``loop.call_at``); when the host machine is loaded it gets there late, which
delays the ``!PULSE`` line but never changes the offset it reports, nor which pulses
count: every pulse whose ``t_k`` came before ``OUTP:STOP``, a fault or the watchdog is
counted, even if the loop only catches up with it at the stop.

Physics: the load is a resistance R (``load_ohm``) with an optional series
double-layer capacitance C (``load_uf``, 0 = none). One pulse's current waveform is
computed with numpy once per train (and again only if the load changes mid-train);
peak current, charge (integral of |i|) and energy (integral of v * i) come from it.

Readings of the ICD that are not spelled out there (all chosen to be safe, and listed
in the module docstring so a reader of the code finds them):

- Errors: every ``ERR`` reply and every latched fault is also queued for
  ``SYST:ERR?`` (16 entries; when full the newest entry becomes -350). ``*RST`` does
  not clear that queue (as in SCPI). Texts are those of the ICD's table.
- A line longer than 128 bytes (not counting ``\\r\\n``), a line that is not ASCII and
  an empty line get ``ERR -100``. A query with an argument, or a command that needs
  none, gets ``ERR -104``; a setting without a number, ``-104``; a number outside the
  range, or a period below 2 x width, ``-222``; a voltage off the 0.5 V step, a
  non-integral pulse count, or an unknown keyword value (``PULS:POL``,
  ``SYST:EVEN:PULS``), ``-224``.
- ``SYST:EVEN:PULS`` is not a pulse parameter: it is allowed in every state.
  ``MEAS:IMP?`` is refused (-222) only while RUNNING; its reply comes after ~5 ms and
  saturates at 10 000 000 ohms on an open circuit.
- ``OUTP:ARM`` while ARMED answers OK; a finished train returns the device to IDLE.
- Open circuit (R above 20 kOhm) and overcurrent (peak above CURR:LIM) are found by
  the pulse itself: the pulse is cut and not counted, the train aborts, the fault
  latches. The report's peak includes the peak that tripped the limit.
- Over temperature (above 60 degC) is watched continuously and latches in any state.
- Injected faults ``overcurrent`` (a 1 ohm short), ``open_circuit`` (R = infinity),
  ``over_temperature`` (85 degC) and ``stall`` are conditions that last until cleared;
  ``garbage`` and ``drop_reply`` are one-offs counted per reply line. A stalled device
  sends nothing at all (neither replies nor events) and does not count the host's
  lines as heartbeats; its watchdog still turns the output off.
- Timer: the jitter ``J_k`` is a whole number of microseconds drawn uniformly from
  ``[-J, +J]`` (J rounded down) when the train is triggered; ``t_1`` is clamped at 0.
  ``timing_drift`` (optional ``us``, default 300; ``count`` trains, -1 until cleared) is
  taken by the next train triggered and stays with that train until it ends, even if
  cleared meanwhile; the device does not notice it (no fault). A pulse counts (totals,
  report, ``!PULSE``) from its start; a train ends (``!DONE``, IDLE) one pulse width after
  the last pulse's start. Pulses that the loop reaches late at a stop are counted and
  their ``!PULSE`` lines sent before the stop's reply.
"""

from __future__ import annotations

import enum
import math
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from simulators.base import Connection, ControlError, StreamDeviceSimulator

IDENTITY = "DeviceHub-Sim,EPG-1,SIM00001,1.0.0"

MAX_LINE = 128
WATCHDOG_S = 0.5
MEAS_DELAY_S = 0.005
ERROR_QUEUE_LEN = 16
OPEN_CIRCUIT_OHM = 20_000.0
IMPEDANCE_SATURATION_OHM = 10_000_000.0
OVER_TEMPERATURE_C = 60.0
INJECTED_HOT_C = 85.0
SHORT_CIRCUIT_OHM = 1.0
WAVEFORM_SAMPLES = 256
DEFAULT_DRIFT_US = 300.0
MAX_DRIFT_US = 100_000.0
DEFAULT_JITTER_US = 2.0

ERROR_TEXT = {
    0: "No error",
    -100: "Command error (unknown header)",
    -104: "Data type error",
    -222: "Data out of range / not allowed in this state",
    -224: "Illegal parameter value",
    -301: "Overcurrent",
    -302: "Open circuit (impedance above 20 kOhm)",
    -303: "Over temperature",
    -310: "Watchdog",
    -350: "Queue overflow",
}

_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 spells it trapz


class State(enum.Enum):
    IDLE = "IDLE"
    ARMED = "ARMED"
    RUNNING = "RUNNING"
    FAULT = "FAULT"


class CommandError(Exception):
    """A host line that gets ``ERR <code>``."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@dataclass
class Settings:
    amplitude_v: float = 10.0
    width_ms: float = 1.0
    period_ms: float = 100.0
    pulses: int = 10
    polarity: str = "MONO"
    current_limit_ma: float = 20.0
    pulse_events: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "amplitude_v": self.amplitude_v, "width_ms": self.width_ms, "period_ms": self.period_ms,
            "pulses": self.pulses, "polarity": self.polarity.lower(),
            "current_limit_ma": self.current_limit_ma, "pulse_events": self.pulse_events,
        }


@dataclass(frozen=True)
class PulseShape:
    """One pulse's figures, from the numpy waveform (magnitudes; the sign does not change them)."""

    peak_ma: float
    charge_uc: float
    energy_mj: float


@dataclass
class Train:
    """The train in progress: the device timer's schedule and what was delivered."""

    t0_loop: float  # loop.time() of the trigger: where the loop is asked to reach each t_k
    t0_mono: float  # time.monotonic() of the trigger (the loop's clock too)
    offsets_us: list[int]  # t_k of pulse k = index + 1, by the device's timer
    width_s: float
    period_us: float
    next_k: int = 1  # the next pulse to start
    key: tuple[float, ...] = ()
    shape: PulseShape | None = None
    handle: Any = None
    timing_error_us: int = 0  # the largest interval error |t_k - t_(k-1) - P| so far

    @property
    def count(self) -> int:
        return len(self.offsets_us)


def timer_offsets(count: int, period_ms: float, ppm: float, jitter_us: float, drift_us: float,
                  rng: np.random.Generator) -> list[int]:
    """Pulse start offsets by the device's timer (ICD physics), in whole microseconds."""
    p_us = period_ms * 1e3
    j = int(math.floor(jitter_us))
    jitter = rng.integers(-j, j + 1, count) if j > 0 else np.zeros(count, dtype=np.int64)
    out = []
    for i in range(count):  # i = k - 1
        t = round(i * p_us * (1.0 + ppm * 1e-6)) + round(i * drift_us) + int(jitter[i])
        out.append(max(0, t) if i == 0 else t)
    return out


@dataclass
class Report:
    pulses: int = 0
    charge_uc: float = 0.0
    energy_mj: float = 0.0
    peak_ma: float = 0.0


@dataclass
class _ConnState:
    buf: bytearray = field(default_factory=bytearray)
    overlong: bool = False
    busy: bool = False  # a deferred reply (MEAS:IMP?) is pending; later lines wait their turn
    pending: deque[bytes | None] = field(default_factory=deque)


def fmt(x: float, decimals: int = 6) -> str:
    """Fixed-point without trailing zeros: ``12.5``, ``10``, ``0.05`` (never an exponent)."""
    s = f"{x:.{decimals}f}".rstrip("0").rstrip(".")
    return "0" if s in ("", "-0") else s


def pulse_shape(volts: float, width_ms: float, r_ohm: float, c_uf: float) -> PulseShape:
    """Current waveform of one rectangular voltage pulse into R (and a series C).

    Without C the current is V/R throughout; with C it decays as the double layer
    charges, i(t) = V/R * exp(-t / RC), the capacitor starting discharged (the output
    stage shorts it between pulses).
    """
    if not math.isfinite(r_ohm) or r_ohm <= 0:
        return PulseShape(0.0, 0.0, 0.0)
    t = np.linspace(0.0, width_ms * 1e-3, WAVEFORM_SAMPLES)
    if c_uf > 0:
        tau = r_ohm * c_uf * 1e-6
        i = (volts / r_ohm) * np.exp(-t / tau)
    else:
        i = np.full_like(t, volts / r_ohm)
    return PulseShape(
        peak_ma=float(np.max(np.abs(i))) * 1e3,
        charge_uc=float(_trapezoid(np.abs(i), t)) * 1e6,
        energy_mj=float(_trapezoid(volts * i, t)) * 1e3,
    )


class EpgSimulator(StreamDeviceSimulator):
    kind: ClassVar[str] = "epg"
    fault_names: ClassVar[tuple[str, ...]] = (
        "overcurrent", "open_circuit", "over_temperature", "stall", "garbage", "drop_reply", "timing_drift",
    )
    inputs: ClassVar[dict[str, tuple[float, float]]] = {
        "load_ohm": (1.0, 1e6),
        "load_uf": (0.0, 10_000.0),
        "temperature_c": (-40.0, 150.0),
        "timer_ppm": (-10_000.0, 10_000.0),
        "timer_jitter_us": (0.0, 1_000.0),
    }
    #: conditions that last until cleared (the rest are one-offs counted per reply)
    CONDITIONS: ClassVar[frozenset[str]] = frozenset({"overcurrent", "open_circuit", "over_temperature", "stall"})

    def __init__(self, *, seed: int | None = None, **_: Any) -> None:
        super().__init__(seed=seed)
        self.settings = Settings()
        self._state = State.IDLE
        self.fault: int | None = None
        self.errors: deque[int] = deque()
        self.load_ohm = 1000.0
        self.load_uf = 0.0
        self.temperature_c = 25.0
        # the device's timer: a fixed frequency error from the seed, and its jitter
        self.timer_ppm = float(np.round(self.rng.uniform(-20.0, 20.0), 3))
        self.timer_jitter_us = DEFAULT_JITTER_US
        self.drift_us = DEFAULT_DRIFT_US  # of an injected timing_drift
        self.last_timing_error_us = 0  # of the last train (largest interval error)
        self.report = Report()
        self.train: Train | None = None
        # totals since the simulator started
        self.total_pulses = 0
        self.total_charge_uc = 0.0
        self.total_energy_mj = 0.0
        self._last_line = time.monotonic()
        self._watchdog: Any = None
        self._handlers: dict[str, Callable[[Connection, str], str | None]] = {
            "*IDN?": self._q_idn, "*RST": self._c_rst, "SYST:ERR?": self._q_err,
            "SOUR:VOLT": self._c_volt, "SOUR:VOLT?": self._q_volt,
            "PULS:WIDT": self._c_width, "PULS:WIDT?": self._q_width,
            "PULS:PER": self._c_period, "PULS:PER?": self._q_period,
            "PULS:COUN": self._c_count, "PULS:COUN?": self._q_count,
            "PULS:POL": self._c_pol, "PULS:POL?": self._q_pol,
            "CURR:LIM": self._c_limit, "CURR:LIM?": self._q_limit,
            "MEAS:IMP?": self._q_imp, "OUTP:ARM": self._c_arm, "OUTP:TRIG": self._c_trig,
            "OUTP:STOP": self._c_stop, "OUTP:STAT?": self._q_stat, "TRAIN:REP?": self._q_rep,
            "SYST:HEART": self._c_heart, "SYST:EVEN:PULS": self._c_events,
            "SYST:FAULT:CLR": self._c_fault_clr,
        }

    @property
    def state(self) -> State:
        return self._state

    @state.setter
    def state(self, value: State) -> None:
        was_on = self._state in (State.ARMED, State.RUNNING)
        self._state = value
        if (value in (State.ARMED, State.RUNNING)) != was_on:
            self.mark_output_change()  # before any reply or event line

    # ================================================================== lifetime
    async def stop(self) -> None:
        self._stop_train()
        self._cancel_watchdog()
        await super().stop()

    # ================================================================== the world
    @property
    def effective_ohm(self) -> float:
        if self.fault_active("open_circuit"):
            return math.inf
        if self.fault_active("overcurrent"):
            return SHORT_CIRCUIT_OHM
        return self.load_ohm

    @property
    def effective_temperature_c(self) -> float:
        return max(self.temperature_c, INJECTED_HOT_C) if self.fault_active("over_temperature") else self.temperature_c

    @property
    def stalled(self) -> bool:
        return self.fault_active("stall")

    def set_input(self, name: str, value: float) -> None:
        setattr(self, name, value)
        if name == "temperature_c":
            self._check_temperature()

    def op_inject(self, req: dict[str, Any]) -> dict[str, Any]:
        us = req.get("us")
        if us is not None:
            if req.get("fault") != "timing_drift":
                raise ControlError("'us' applies to the fault timing_drift only")
            if isinstance(us, bool) or not isinstance(us, (int, float)) or not 0 < us <= MAX_DRIFT_US:
                raise ControlError(f"'us' must be a number within 0 (excluded)..{MAX_DRIFT_US:g}")
        reply = super().op_inject(req)  # validates the name and count before anything changes
        if req.get("fault") == "timing_drift":
            self.drift_us = float(us) if us is not None else DEFAULT_DRIFT_US
            reply["us"] = self.drift_us
        return reply

    def on_inject(self, name: str) -> None:
        if name in self.CONDITIONS:
            self.injected[name] = -1  # a condition lasts until cleared, whatever the count
        if name == "over_temperature":
            self._check_temperature()

    def _check_temperature(self) -> None:
        if self.state is not State.FAULT and self.effective_temperature_c > OVER_TEMPERATURE_C:
            self._latch(-303)

    def _cause_present(self, code: int) -> bool:
        s = self.settings
        if code == -301:
            r = self.effective_ohm
            return math.isfinite(r) and s.amplitude_v / r * 1e3 > s.current_limit_ma
        if code == -302:
            return self.effective_ohm > OPEN_CIRCUIT_OHM
        if code == -303:
            return self.effective_temperature_c > OVER_TEMPERATURE_C
        return False  # -310: the host is talking again

    def snapshot(self) -> dict[str, Any]:
        r = self.effective_ohm
        return {
            "output_on": self.state in (State.ARMED, State.RUNNING),
            "state": self.state.value.lower(),
            "fault": self.fault,
            "pulses": self.total_pulses,
            "charge_uC": self.total_charge_uc,
            "energy_mJ": self.total_energy_mj,
            "load_ohm": self.load_ohm,
            "load_uf": self.load_uf,
            "temperature_c": self.temperature_c,
            "timer_ppm": self.timer_ppm,
            "timer_jitter_us": self.timer_jitter_us,
            "effective_load_ohm": r if math.isfinite(r) else None,
            "effective_temperature_c": self.effective_temperature_c,
            "settings": self.settings.as_dict(),
            "last_train": {
                "pulses": self.report.pulses, "charge_uC": self.report.charge_uc,
                "energy_mJ": self.report.energy_mj, "peak_mA": self.report.peak_ma,
                "timing_error_us": self.train.timing_error_us if self.train else self.last_timing_error_us,
            },
            "error_queue": len(self.errors),
            "stalled": self.stalled,
        }

    # ================================================================== bytes in
    def connection_made(self, conn: Connection) -> None:
        conn.state["epg"] = _ConnState()
        super().connection_made(conn)

    def data_received(self, conn: Connection, data: bytes) -> None:
        st: _ConnState = conn.state.setdefault("epg", _ConnState())
        buf = st.buf
        buf += data
        while True:
            i = buf.find(b"\n")
            if i < 0:
                if len(buf) > MAX_LINE + 1:  # +1: a '\r' may still come before the '\n'
                    st.overlong = True
                    buf.clear()  # keep discarding until the line ends
                break
            line = bytes(buf[:i])
            del buf[: i + 1]
            if line.endswith(b"\r"):
                line = line[:-1]
            if st.overlong or len(line) > MAX_LINE:
                st.overlong = False
                self._line_received(conn, st, None)
            else:
                self._line_received(conn, st, line)

    def _line_received(self, conn: Connection, st: _ConnState, line: bytes | None) -> None:
        if self.stalled:
            return  # a stalled device neither answers nor counts the line as a heartbeat
        self._last_line = time.monotonic()
        if st.busy:
            st.pending.append(line)
        else:
            self._process(conn, st, line)

    def _process(self, conn: Connection, st: _ConnState, line: bytes | None) -> None:
        reply = self._execute(conn, line)
        if reply is None:  # deferred: the handler answers later and resumes the queue
            st.busy = True
            return
        self._reply(conn, reply)

    def _resume(self, conn: Connection) -> None:
        st: _ConnState = conn.state["epg"]
        st.busy = False
        while st.pending and not st.busy:
            self._process(conn, st, st.pending.popleft())

    def _execute(self, conn: Connection, line: bytes | None) -> str | None:
        try:
            if line is None:
                raise CommandError(-100)
            try:
                text = line.decode("ascii").strip()
            except UnicodeDecodeError:
                raise CommandError(-100) from None
            header, _, arg = text.partition(" ")
            handler = self._handlers.get(header.upper())
            if handler is None:
                raise CommandError(-100)
            return handler(conn, arg.strip())
        except CommandError as exc:
            self._push_error(exc.code)
            return f'ERR {exc.code},"{ERROR_TEXT[exc.code]}"'

    # ================================================================== bytes out
    def _reply(self, conn: Connection, text: str) -> None:
        if self.stalled or not conn.open:
            return
        if self.consume_fault("drop_reply"):
            return
        if self.consume_fault("garbage"):
            conn.send(self._noise())
            return
        conn.send(text.encode("ascii") + b"\n")

    def _event(self, text: str) -> None:
        if not self.stalled:
            self.broadcast(text.encode("ascii") + b"\n")  # one write: never split inside a reply

    def _noise(self) -> bytes:
        """A line of noise: random bytes, not starting with '!', at least one non-ASCII, ending in '\\n'."""
        n = int(self.rng.integers(8, 40))
        raw = bytearray(self.rng.integers(0, 256, n, dtype=np.uint8).tobytes())
        for k, b in enumerate(raw):
            if b == 0x0A:
                raw[k] = 0xFF
        if raw[0] == ord("!"):
            raw[0] = 0xA1
        raw[int(self.rng.integers(0, n))] |= 0x80
        return bytes(raw) + b"\n"

    # ================================================================== errors and faults
    def _push_error(self, code: int) -> None:
        if len(self.errors) >= ERROR_QUEUE_LEN:
            self.errors[-1] = -350
        else:
            self.errors.append(code)

    def _latch(self, code: int, at: float | None = None) -> None:
        """Output off first, then record and announce the fault.

        ``at``: the fault's moment on time.monotonic() (now when None); pulses of a
        running train that started before it are counted (see ``_stop_train``).
        """
        late = self._stop_train(time.monotonic() if at is None else at)
        self._cancel_watchdog()
        self.state = State.FAULT
        self.fault = code
        self._push_error(code)
        self._send_late(late)
        self._event(f'!FAULT {code},"{ERROR_TEXT[code]}"')

    # ================================================================== arguments
    def _no_arg(self, arg: str) -> None:
        if arg:
            raise CommandError(-104)

    def _setting_allowed(self) -> None:
        if self.state in (State.ARMED, State.RUNNING):
            raise CommandError(-222)

    @staticmethod
    def _number(arg: str) -> float:
        if not _NUMBER.fullmatch(arg):
            raise CommandError(-104)
        value = float(arg)
        if not math.isfinite(value):
            raise CommandError(-104)
        return value

    @staticmethod
    def _in(value: float, lo: float, hi: float) -> None:
        if not lo <= value <= hi:
            raise CommandError(-222)

    # ================================================================== commands
    def _q_idn(self, conn: Connection, arg: str) -> str:
        self._no_arg(arg)
        return IDENTITY

    def _c_rst(self, conn: Connection, arg: str) -> str:
        self._no_arg(arg)
        late = self._stop_train(time.monotonic())
        self._cancel_watchdog()
        self.settings = Settings()
        self.state = State.IDLE
        self._send_late(late)
        self.fault = None
        if self.loop is not None:  # a cause still present latches again, after the OK
            self.loop.call_soon(self._check_temperature)
        return "OK"

    def _q_err(self, conn: Connection, arg: str) -> str:
        self._no_arg(arg)
        code = self.errors.popleft() if self.errors else 0
        return f'{code},"{ERROR_TEXT[code]}"'

    def _c_volt(self, conn: Connection, arg: str) -> str:
        self._setting_allowed()
        v = self._number(arg)
        self._in(v, 1.0, 150.0)
        if abs(v * 2 - round(v * 2)) > 1e-9:
            raise CommandError(-224)
        self.settings.amplitude_v = round(v * 2) / 2
        return "OK"

    def _q_volt(self, conn: Connection, arg: str) -> str:
        self._no_arg(arg)
        return fmt(self.settings.amplitude_v, 10)

    def _c_width(self, conn: Connection, arg: str) -> str:
        self._setting_allowed()
        w = self._number(arg)
        self._in(w, 0.05, 20.0)
        if self.settings.period_ms < 2 * w:
            raise CommandError(-222)
        self.settings.width_ms = w
        return "OK"

    def _q_width(self, conn: Connection, arg: str) -> str:
        self._no_arg(arg)
        return fmt(self.settings.width_ms, 10)

    def _c_period(self, conn: Connection, arg: str) -> str:
        self._setting_allowed()
        p = self._number(arg)
        self._in(p, 1.0, 2000.0)
        if p < 2 * self.settings.width_ms:
            raise CommandError(-222)
        self.settings.period_ms = p
        return "OK"

    def _q_period(self, conn: Connection, arg: str) -> str:
        self._no_arg(arg)
        return fmt(self.settings.period_ms, 10)

    def _c_count(self, conn: Connection, arg: str) -> str:
        self._setting_allowed()
        n = self._number(arg)
        if n != int(n):
            raise CommandError(-224)
        self._in(n, 1, 10_000)
        self.settings.pulses = int(n)
        return "OK"

    def _q_count(self, conn: Connection, arg: str) -> str:
        self._no_arg(arg)
        return str(self.settings.pulses)

    def _c_pol(self, conn: Connection, arg: str) -> str:
        self._setting_allowed()
        if not arg:
            raise CommandError(-104)
        value = arg.upper()
        if value not in ("MONO", "BIP"):
            raise CommandError(-224)
        self.settings.polarity = value
        return "OK"

    def _q_pol(self, conn: Connection, arg: str) -> str:
        self._no_arg(arg)
        return self.settings.polarity

    def _c_limit(self, conn: Connection, arg: str) -> str:
        self._setting_allowed()
        lim = self._number(arg)
        self._in(lim, 1.0, 100.0)
        self.settings.current_limit_ma = lim
        return "OK"

    def _q_limit(self, conn: Connection, arg: str) -> str:
        self._no_arg(arg)
        return fmt(self.settings.current_limit_ma, 10)

    def _q_imp(self, conn: Connection, arg: str) -> str | None:
        self._no_arg(arg)
        if self.state is State.RUNNING or self.loop is None:
            raise CommandError(-222)

        def answer() -> None:
            r = self.effective_ohm
            if r > IMPEDANCE_SATURATION_OHM:
                value = IMPEDANCE_SATURATION_OHM
            else:
                value = r * (1.0 + float(self.rng.normal(0.0, 0.002)))
            self._reply(conn, fmt(value, 1))
            self._resume(conn)

        self.loop.call_later(MEAS_DELAY_S, answer)  # the test pulse takes ~5 ms
        return None

    def _c_arm(self, conn: Connection, arg: str) -> str:
        self._no_arg(arg)
        if self.state is State.ARMED:
            return "OK"
        if self.state is not State.IDLE:
            raise CommandError(-222)
        s = self.settings
        if s.period_ms < 2 * s.width_ms:  # cannot happen through the setters; defensive
            raise CommandError(-222)
        self.state = State.ARMED
        self._start_watchdog()
        return "OK"

    def _c_trig(self, conn: Connection, arg: str) -> str:
        self._no_arg(arg)
        if self.state is not State.ARMED or self.loop is None:
            raise CommandError(-222)
        s = self.settings
        drift = self.drift_us if self.consume_fault("timing_drift") else 0.0  # counted per train
        offsets = timer_offsets(s.pulses, s.period_ms, self.timer_ppm, self.timer_jitter_us, drift, self.rng)
        t0_loop, t0_mono = self.loop.time(), time.monotonic()
        self.state = State.RUNNING
        self.report = Report()
        self.last_timing_error_us = 0
        self.train = Train(t0_loop=t0_loop, t0_mono=t0_mono, offsets_us=offsets,
                           width_s=s.width_ms * 1e-3, period_us=s.period_ms * 1e3)
        self.train.handle = self.loop.call_at(t0_loop + offsets[0] * 1e-6, self._run_train, self.train)
        return "OK"

    def _c_stop(self, conn: Connection, arg: str) -> str:
        self._no_arg(arg)
        if self.state in (State.ARMED, State.RUNNING):
            late = self._stop_train(time.monotonic())
            self._cancel_watchdog()
            self.state = State.IDLE
            self._send_late(late)
        return "OK"

    def _q_stat(self, conn: Connection, arg: str) -> str:
        self._no_arg(arg)
        return self.state.value

    def _q_rep(self, conn: Connection, arg: str) -> str:
        self._no_arg(arg)
        r = self.report
        return f"{r.pulses},{fmt(r.charge_uc)},{fmt(r.energy_mj)},{fmt(r.peak_ma, 3)}"

    def _c_heart(self, conn: Connection, arg: str) -> str:
        self._no_arg(arg)
        return "OK"

    def _c_events(self, conn: Connection, arg: str) -> str:
        value = arg.upper()
        if not value:
            raise CommandError(-104)
        if value in ("ON", "1"):
            self.settings.pulse_events = True
        elif value in ("OFF", "0"):
            self.settings.pulse_events = False
        else:
            raise CommandError(-224)
        return "OK"

    def _c_fault_clr(self, conn: Connection, arg: str) -> str:
        self._no_arg(arg)
        if self.state is not State.FAULT:
            return "OK"
        if self.fault is not None and self._cause_present(self.fault):
            raise CommandError(-222)
        if self.effective_temperature_c > OVER_TEMPERATURE_C:
            raise CommandError(-222)
        self.state = State.IDLE
        self.fault = None
        return "OK"

    # ================================================================== the train
    def _shape(self, train: Train) -> PulseShape:
        s = self.settings
        key = (s.amplitude_v, s.width_ms, self.effective_ohm, self.load_uf)
        if train.shape is None or train.key != key:  # once per train, unless the load changes
            train.key = key
            train.shape = pulse_shape(s.amplitude_v, s.width_ms, self.effective_ohm, self.load_uf)
        return train.shape

    def _run_train(self, train: Train) -> None:
        """Start every pulse whose t_k has come on the device's timer, then wait for the next.

        The loop may get here late (a loaded machine): the pulses are still the ones
        the timer started, with the offsets it gave them.
        """
        if self.train is not train or self.state is not State.RUNNING:
            return
        assert self.loop is not None
        now_us = (time.monotonic() - train.t0_mono) * 1e6 + 0.5  # call_at may wake a hair early
        while train.next_k <= train.count and train.offsets_us[train.next_k - 1] <= now_us:
            if not self._start_pulse(train):
                return
        if train.next_k > train.count:
            end = train.t0_loop + train.offsets_us[-1] * 1e-6 + train.width_s
            train.handle = self.loop.call_at(end, self._end_train, train)
        else:
            train.handle = self.loop.call_at(
                train.t0_loop + train.offsets_us[train.next_k - 1] * 1e-6, self._run_train, train)

    def _start_pulse(self, train: Train) -> bool:
        """Pulse ``train.next_k`` starts: the load's faults cut it; else it counts. False on a fault."""
        if self.effective_ohm > OPEN_CIRCUIT_OHM:
            self._detach(train)
            self._latch(-302)
            return False
        shape = self._shape(train)
        if shape.peak_ma > self.settings.current_limit_ma:
            self.report.peak_ma = max(self.report.peak_ma, shape.peak_ma)
            self._detach(train)
            self._latch(-301)
            return False
        line = self._count_pulse(train, shape)
        if line is not None:
            self._event(line)
        return True

    def _count_pulse(self, train: Train, shape: PulseShape) -> str | None:
        """Count pulse ``train.next_k`` (totals, report, timing error); its !PULSE line, if enabled."""
        k = train.next_k
        train.next_k += 1
        t_us = train.offsets_us[k - 1]
        if k >= 2:
            err = abs(t_us - train.offsets_us[k - 2] - round(train.period_us))
            train.timing_error_us = max(train.timing_error_us, err)
        rep = self.report
        rep.pulses += 1
        rep.charge_uc += shape.charge_uc
        rep.energy_mj += shape.energy_mj
        rep.peak_ma = max(rep.peak_ma, shape.peak_ma)
        self.total_pulses += 1
        self.total_charge_uc += shape.charge_uc
        self.total_energy_mj += shape.energy_mj
        if self.settings.pulse_events:
            return f"!PULSE {k},{t_us},{fmt(shape.peak_ma, 3)}"
        return None

    def _end_train(self, train: Train) -> None:
        """One width after the last pulse's start: the train is done."""
        if self.train is not train or self.state is not State.RUNNING:
            return
        self.train = None
        self.last_timing_error_us = train.timing_error_us
        self._cancel_watchdog()
        self.state = State.IDLE
        rep = self.report
        self._event(f"!DONE {rep.pulses},{fmt(rep.charge_uc)},{fmt(rep.energy_mj)}")

    def _detach(self, train: Train) -> None:
        """The train ends without catching up (a pulse of its own found the fault)."""
        if self.train is train:
            self.train = None
            self.last_timing_error_us = train.timing_error_us
        if train.handle is not None:
            train.handle.cancel()

    def _stop_train(self, at: float | None = None) -> list[str]:
        """End the train in progress. With ``at`` (time.monotonic() of the stop, fault or
        watchdog), the pulses the timer started before then, which the loop had not
        reached yet, are counted first; their !PULSE lines are returned, for the caller
        to send once the output is off (``_send_late``)."""
        train, self.train = self.train, None
        if train is None:
            return []
        if train.handle is not None:
            train.handle.cancel()
        late: list[str] = []
        if at is not None and self.state is State.RUNNING:
            until_us = (at - train.t0_mono) * 1e6
            while train.next_k <= train.count and train.offsets_us[train.next_k - 1] < until_us:
                if self.effective_ohm > OPEN_CIRCUIT_OHM:
                    break
                shape = self._shape(train)
                if shape.peak_ma > self.settings.current_limit_ma:
                    break
                line = self._count_pulse(train, shape)
                if line is not None:
                    late.append(line)
        self.last_timing_error_us = train.timing_error_us
        return late

    def _send_late(self, lines: list[str]) -> None:
        for line in lines:
            self._event(line)

    # ================================================================== watchdog
    def _start_watchdog(self) -> None:
        self._cancel_watchdog()
        if self.loop is not None:
            self._watchdog = self.loop.call_at(self._deadline(), self._watchdog_check)

    def _deadline(self) -> float:
        assert self.loop is not None
        # _last_line is on time.monotonic(), which is the loop's clock too
        return self.loop.time() + (self._last_line + WATCHDOG_S - time.monotonic())

    def _watchdog_check(self) -> None:
        self._watchdog = None
        if self.state not in (State.ARMED, State.RUNNING):
            return
        if time.monotonic() - self._last_line >= WATCHDOG_S:
            self._latch(-310, at=self._last_line + WATCHDOG_S)
        else:
            self._start_watchdog()

    def _cancel_watchdog(self) -> None:
        handle, self._watchdog = self._watchdog, None
        if handle is not None:
            handle.cancel()
