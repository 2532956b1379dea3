"""INJ-1 mesotherapy injector gun simulator (shared/icd/inj-1.md).

The gun speaks the binary frame protocol of ``drivers.inj_frames`` on a byte stream
(TCP or a pty). The control channel stands in for the technician (``trigger``,
``auto_trigger``), the syringe (``reservoir_ul``, ``viscosity``) and failing parts
(``occlusion``, ``empty``, ``cartridge_missing``, ``corrupt``, ``drop_reply``, ``stall``).

Readings of the ICD this simulator implements (the safe one where it is silent):

- SET_PARAMS is allowed in IDLE and FAULT only; while ARMED or FIRING it gets NAK 4, so
  the shot volume and depth cannot change under an armed gun. The state check comes
  before the range check.
- SET_CAP is allowed in every state and accepts any u32: the cap is the host's choice.
- ARM gets NAK 4 in FAULT, with the reservoir empty (0 uL or ``empty`` injected) or the
  needle cartridge missing. ARM while already armed (or firing) is acknowledged.
- DISARM always ACKs; from FAULT the fault stays latched (ACK carries state 3).
- CLEAR_FAULT outside FAULT is acknowledged (nothing to clear); in FAULT it gets NAK 4
  while the cause of the latched fault is still present (fault 5 has none).
- Any frame with a good CRC, a known command and a fitting payload length counts for
  the watchdog, even when it is refused (NAK 3/4): it proves the host is alive.
- ``occlusion``, ``empty``, ``cartridge_missing`` and ``stall`` are conditions that stay
  until the control op ``clear`` removes them (``count`` does not wear them out);
  ``corrupt`` and ``drop_reply`` are one-off and counted.
- ``occlusion`` injected while armed faults at once; otherwise the gun arms and the
  pressure passes 400 kPa at the next shot, which then delivers nothing (fault 6).
- ``empty`` or ``cartridge_missing`` arising while armed latch fault 7 / 8 at once. A
  shot that leaves the reservoir at 0 latches fault 7. A pull with some reservoir left,
  but less than the set volume, is refused with reason 3 and the gun stays armed.
- Refusal order on a pull: not armed (1), cap (2), empty (3). A pull while a shot or a
  held burst is in progress is ignored.
- A shot that is cut short (DISARM, a fault, the watchdog) counts the part already
  delivered (proportional to the time the plunger moved) and reports it in a SHOT event,
  so the host's count always equals what left the syringe.
- A stalled gun processes nothing, answers nothing, sends no events and ignores the
  trigger; its watchdog still disarms it and latches fault 5 (reported once the stall
  ends, in STATUS).
- ``auto_trigger`` pulls are brief: one shot per pull in every mode.
- ``over_delivery`` (control ``set`` only, not a physical input of the ICD) stands in for
  a worn valve: every shot delivers that fraction more than set (0.5: 1.5 x), past the
  cap, and reports what it delivered. Tests use it to prove the host's own bound.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from typing import Any, ClassVar

from drivers.inj_frames import (
    EVENT_SEQ,
    PARTIAL_TIMEOUT_S,
    REQUEST_PAYLOAD_SIZE,
    Ack,
    Cap,
    Cmd,
    Code,
    FaultEvent,
    Frame,
    FrameParser,
    Info,
    Mode,
    Nak,
    Params,
    Refusal,
    Shot,
    State,
    Status,
    TriggerRefused,
    code_text,
    encode,
)
from simulators.base import Connection, ControlError, StreamDeviceSimulator

U16 = 0xFFFF
U32 = 0xFFFFFFFF


class InjSimulator(StreamDeviceSimulator):
    kind: ClassVar[str] = "inj"
    fault_names: ClassVar[tuple[str, ...]] = ("occlusion", "empty", "cartridge_missing", "corrupt", "drop_reply", "stall")
    inputs: ClassVar[dict[str, tuple[float, float]]] = {"reservoir_ul": (0.0, 10000.0), "viscosity": (0.5, 20.0),
                                                        "over_delivery": (0.0, 1.0)}

    MODEL = 1
    FIRMWARE = 102
    WATCHDOG_S = 1.0
    PRESSURE_LIMIT_KPA = 400.0
    #: pressure model: each shot adds 20 kPa + 7 kPa per unit of viscosity to what is left
    #: of the last one, which relaxes with 0.15 s from that shot's start. The worst normal
    #: case (viscosity 20, 10 shots/s) settles near 330 kPa, under the 400 kPa limit.
    PRESSURE_PER_SHOT_KPA = 20.0
    PRESSURE_PER_VISCOSITY_KPA = 7.0
    PRESSURE_TAU_S = 0.15
    #: trigger hold limit accepted by the control op
    MAX_HOLD_S = 60.0
    MAX_AUTO_HZ = 50.0

    def __init__(self, *, seed: int | None = None, **_: Any) -> None:
        super().__init__(seed=seed)
        self.serial = f"INJ{(seed or 0) % 100000:05d}"
        # device state
        self._state = State.IDLE
        self.fault = 0
        self.volume_set_x10 = 200  # 20.0 uL
        self.depth_set_x10 = 15  # 1.5 mm
        self.mode = Mode.SINGLE
        self.rate = 3
        self.cap_x10 = 0  # power-up: refuses every shot until the host sets a cap
        # world
        self.reservoir_x10 = 100_000  # a full 10 mL syringe
        self.viscosity = 1.0
        self.over_delivery = 0.0  # a misbehaving gun: this fraction more than set, per shot
        # totals since the simulator started
        self.shots = 0
        self.volume_total_x10 = 0
        self.requests: Counter[str] = Counter()
        # pressure: value at _p_t, relaxing exponentially unless held (during a shot, occluded)
        self._p_kpa = 0.0
        self._p_t = self.now()
        self._p_hold = False
        # timing
        self._armed_t = self.now()
        self._last_rx = self.now()
        self._shot_t0 = 0.0
        self._shot_s = 0.0
        self._shot_timer: asyncio.TimerHandle | None = None
        self._burst_left = 0
        self._burst_timer: asyncio.TimerHandle | None = None
        self.auto_trigger_hz = 0.0
        self._auto_task: asyncio.Task[None] | None = None

    @property
    def state(self) -> State:
        return self._state

    @state.setter
    def state(self, value: State) -> None:
        was_on = self._armed()
        self._state = value
        if self._armed() != was_on:  # output_on changed: stamp it before any reply or event
            self.mark_output_change()

    # ================================================================== lifetime
    async def start(self) -> None:
        await super().start()
        self.spawn(self._watchdog(), name="inj-watchdog")

    async def stop(self) -> None:
        self._cancel_burst()
        if self._shot_timer is not None:
            self._shot_timer.cancel()
            self._shot_timer = None
        await super().stop()

    # ================================================================== byte stream
    def data_received(self, conn: Connection, data: bytes) -> None:
        parser: FrameParser = conn.state.setdefault("parser", FrameParser())
        if self.fault_active("stall"):
            parser.reset()
            return
        self._feed(conn, parser, data)

    def _feed(self, conn: Connection, parser: FrameParser, data: bytes) -> None:
        for item in parser.feed(data, self.now()):
            if isinstance(item, Frame):  # bad CRC, bad LEN, stale partials: never answered
                self._handle(conn, item)
        # ICD: a partial frame is discarded when 50 ms pass without its next byte. Check
        # then, not only when more bytes come: a frame hidden behind a false start (a
        # 0x7E in noise) is found by the rescan and answered within the reply timeout.
        timer = conn.state.pop("partial_timer", None)
        if timer is not None:
            timer.cancel()
        if parser.pending:
            conn.state["partial_timer"] = self.loop.call_later(
                PARTIAL_TIMEOUT_S + 0.002, self._partial_expired, conn, parser)

    def _partial_expired(self, conn: Connection, parser: FrameParser) -> None:
        conn.state.pop("partial_timer", None)
        if conn.open and not self.fault_active("stall"):
            self._feed(conn, parser, b"")

    def _handle(self, conn: Connection, frame: Frame) -> None:
        try:
            cmd = Cmd(frame.cmd)
        except ValueError:
            cmd = None
        if cmd not in REQUEST_PAYLOAD_SIZE:
            self._reply(conn, frame.seq, Cmd.NAK, Nak(Code.UNKNOWN_COMMAND).pack())
            return
        assert cmd is not None
        if len(frame.payload) != REQUEST_PAYLOAD_SIZE[cmd]:
            self._reply(conn, frame.seq, Cmd.NAK, Nak(Code.BAD_FRAME).pack())
            return
        self._last_rx = self.now()
        self.requests[cmd.name] += 1
        reply_cmd, payload = getattr(self, f"_cmd_{cmd.name.lower()}")(frame.payload)
        self._reply(conn, frame.seq, reply_cmd, payload)

    # -- commands: each returns (reply command, reply payload)
    def _ack(self) -> tuple[int, bytes]:
        return Cmd.ACK, Ack(self.state).pack()

    @staticmethod
    def _nak(code: Code) -> tuple[int, bytes]:
        return Cmd.NAK, Nak(code).pack()

    def _cmd_ping(self, _: bytes) -> tuple[int, bytes]:
        return Cmd.INFO, Info(self.MODEL, self.FIRMWARE, self.serial).pack()

    def _cmd_set_params(self, payload: bytes) -> tuple[int, bytes]:
        if self.state in (State.ARMED, State.FIRING):
            return self._nak(Code.NOT_ALLOWED)
        p = Params.unpack(payload)
        # the rate is the burst rate (ICD: "shots/s in burst/nappage"): in single mode it
        # means nothing, so any value is taken and the last valid rate is kept
        burst = p.mode in (Mode.BURST, Mode.NAPPAGE)
        if not (10 <= p.volume_x10 <= 2000 and 5 <= p.depth_x10 <= 60 and p.mode in (0, 1, 2)
                and (1 <= p.rate <= 10 or not burst)):
            return self._nak(Code.OUT_OF_RANGE)
        self.volume_set_x10, self.depth_set_x10 = p.volume_x10, p.depth_x10
        self.mode = Mode(p.mode)
        if 1 <= p.rate <= 10:
            self.rate = p.rate
        return self._ack()

    def _cmd_arm(self, _: bytes) -> tuple[int, bytes]:
        if self.state == State.FAULT or self._empty() or self.fault_active("cartridge_missing"):
            return self._nak(Code.NOT_ALLOWED)
        if self.state == State.IDLE:
            self.state = State.ARMED
            self._armed_t = self.now()
        return self._ack()

    def _cmd_disarm(self, _: bytes) -> tuple[int, bytes]:
        self._disarm()
        if self.state != State.FAULT:
            self.state = State.IDLE
        return self._ack()

    def _cmd_get_status(self, _: bytes) -> tuple[int, bytes]:
        return Cmd.STATUS, Status(
            self.state, self.fault, self.shots & U32, self.volume_total_x10 & U32, self.reservoir_x10,
            min(U16, round(self.pressure_kpa())), self.depth_set_x10, self.volume_set_x10,
        ).pack()

    def _cmd_heartbeat(self, _: bytes) -> tuple[int, bytes]:
        return self._ack()

    def _cmd_set_cap(self, payload: bytes) -> tuple[int, bytes]:
        self.cap_x10 = Cap.unpack(payload).max_volume_x10
        return self._ack()

    def _cmd_clear_fault(self, _: bytes) -> tuple[int, bytes]:
        if self.state != State.FAULT:
            return self._ack()
        if self._cause_present(self.fault):
            return self._nak(Code.NOT_ALLOWED)
        self.state, self.fault = State.IDLE, 0
        self._release_pressure()
        return self._ack()

    # -- sending
    def _reply(self, conn: Connection, seq: int, cmd: int, payload: bytes) -> None:
        if self.consume_fault("drop_reply"):
            return
        conn.send(self._maybe_corrupt(encode(seq, cmd, payload)))

    def _event(self, cmd: int, payload: bytes) -> None:
        if self.fault_active("stall"):
            return
        self.broadcast(self._maybe_corrupt(encode(EVENT_SEQ, cmd, payload)))

    def _maybe_corrupt(self, frame: bytes) -> bytes:
        if not self.consume_fault("corrupt"):
            return frame
        bit = int(self.rng.integers(0, len(frame) * 8))
        out = bytearray(frame)
        out[bit // 8] ^= 1 << (bit % 8)
        return bytes(out)

    # ================================================================== conditions
    def _empty(self) -> bool:
        return self.reservoir_x10 <= 0 or self.fault_active("empty")

    def _cause_present(self, code: int) -> bool:
        if code == Code.OCCLUSION:
            return self.fault_active("occlusion")
        if code == Code.EMPTY:
            return self._empty()
        if code == Code.CARTRIDGE_MISSING:
            return self.fault_active("cartridge_missing")
        return False

    def _armed(self) -> bool:
        return self.state in (State.ARMED, State.FIRING)

    def _check_conditions(self) -> None:
        """Latch a fault for a cause that arose while armed (occlusion: see on_inject)."""
        if not self._armed():
            return
        if self.fault_active("cartridge_missing"):
            self._latch_fault(Code.CARTRIDGE_MISSING)
        elif self._empty():
            self._latch_fault(Code.EMPTY)

    def _latch_fault(self, code: int) -> None:
        """Disarm, latch, then tell the host (the ICD's order)."""
        if self.state == State.FAULT:
            return
        self._disarm()
        if code == Code.OCCLUSION:
            self._p_kpa = self.PRESSURE_LIMIT_KPA + 40.0 + 2.0 * self.viscosity + float(self.rng.uniform(0, 10))
            self._p_t, self._p_hold = self.now(), True
        self.state, self.fault = State.FAULT, int(code)
        self._event(Cmd.FAULT, FaultEvent(code).pack())

    def _disarm(self) -> None:
        """Stop everything that moves: a held burst and a shot in progress."""
        self._cancel_burst()
        if self.state == State.FIRING:
            assert self._shot_timer is not None
            self._shot_timer.cancel()
            self._shot_timer = None
            frac = (self.now() - self._shot_t0) / self._shot_s if self._shot_s > 0 else 1.0
            self._deliver(min(1.0, max(0.0, frac)))
            self.state = State.ARMED

    def _cancel_burst(self) -> None:
        self._burst_left = 0
        if self._burst_timer is not None:
            self._burst_timer.cancel()
            self._burst_timer = None

    # ================================================================== physics
    def pressure_kpa(self, now: float | None = None) -> float:
        if self._p_hold:
            return self._p_kpa
        dt = (self.now() if now is None else now) - self._p_t
        return self._p_kpa * math.exp(-max(0.0, dt) / self.PRESSURE_TAU_S)

    def _release_pressure(self) -> None:
        if self._p_hold and self.state != State.FIRING:
            self._p_t, self._p_hold = self.now(), False

    def _pull(self, hold_s: float) -> str:
        """The technician pulls the trigger; returns what the gun did."""
        if self.fault_active("stall") or self.state == State.FIRING or self._burst_timer is not None:
            return "ignored"
        if self.state != State.ARMED:
            self._refuse(Refusal.NOT_ARMED)
            return "refused"
        shots = 1 if self.mode == Mode.SINGLE else max(1, math.ceil(hold_s * self.rate - 1e-9))
        self._burst_left = shots - 1
        return self._start_shot()

    def _refuse(self, reason: Refusal) -> None:
        self._cancel_burst()
        self._event(Cmd.TRIGGER_REFUSED, TriggerRefused(reason).pack())

    def _start_shot(self) -> str:
        if self.volume_set_x10 > self.cap_x10:
            self._refuse(Refusal.CAP_REACHED)
            return "refused"
        if self.reservoir_x10 < self.volume_set_x10:
            self._refuse(Refusal.EMPTY)
            return "refused"
        now = self.now()
        if self.fault_active("occlusion"):
            self._latch_fault(Code.OCCLUSION)
            return "fault"
        peak = self.pressure_kpa(now) + self.PRESSURE_PER_SHOT_KPA + self.PRESSURE_PER_VISCOSITY_KPA * self.viscosity
        if peak > self.PRESSURE_LIMIT_KPA:
            self._latch_fault(Code.OCCLUSION)
            return "fault"
        self.state = State.FIRING
        self._p_kpa, self._p_t, self._p_hold = peak, now, True
        self._shot_t0 = now
        self._shot_s = 0.05 + 0.04 * self.volume_set_x10 / 2000  # 50..90 ms
        assert self.loop is not None
        self._shot_timer = self.loop.call_later(self._shot_s, self._finish_shot)
        if self._burst_left > 0:
            self._burst_timer = self.loop.call_later(1.0 / self.rate, self._burst_next)
        return "shot"

    def _burst_next(self) -> None:
        self._burst_timer = None
        if self._burst_left <= 0 or self.state == State.FAULT or not self._armed():
            return
        self._burst_left -= 1
        if self.state == State.ARMED and not self.fault_active("stall"):
            self._start_shot()
        elif self._burst_left > 0:  # still firing the previous shot: this pull slot is lost
            assert self.loop is not None
            self._burst_timer = self.loop.call_later(1.0 / self.rate, self._burst_next)

    def _finish_shot(self) -> None:
        self._shot_timer = None
        if self.state != State.FIRING:
            return
        self._deliver(1.0)
        self.state = State.ARMED
        self._check_conditions()

    def _deliver(self, fraction: float) -> None:
        """Account for what left the syringe and report it in a SHOT event."""
        now = self.now()
        scatter = float(min(0.02, max(-0.02, self.rng.normal(0.0, 0.01))))
        vol = min(self.reservoir_x10, round(self.volume_set_x10 * fraction * (1.0 + scatter) * (1.0 + self.over_delivery)))
        # the depth stop limits the needle: the skin's give makes it reach up to 0.1 mm less
        # than set, never more, and never below the ICD's 0.5 mm
        shortfall = round(abs(float(min(1.0, max(-1.0, self.rng.normal(0.0, 0.5))))))
        depth = max(5, self.depth_set_x10 - shortfall)
        self._p_hold = False  # the plunger stops: the pressure relaxes, counted from the shot's start
        if vol <= 0:
            return
        self.shots += 1
        self.volume_total_x10 += vol
        self.reservoir_x10 -= vol
        self.cap_x10 = max(0, self.cap_x10 - vol)
        t_ms = max(0, int((now - self._armed_t) * 1000)) & U32
        self._event(Cmd.SHOT, Shot(self.shots & U32, vol, depth, t_ms).pack())

    async def _watchdog(self) -> None:
        while True:
            if self._armed():
                left = self._last_rx + self.WATCHDOG_S - self.now()
                if left <= 0:
                    self._latch_fault(Code.WATCHDOG)
                    continue
                await asyncio.sleep(min(left, 0.05))
            else:
                await asyncio.sleep(0.01)

    async def _auto_trigger(self, rate_hz: float) -> None:
        assert self.loop is not None
        period = 1.0 / rate_hz
        next_t = self.loop.time()
        while True:
            self._pull(0.0)
            next_t += period
            await asyncio.sleep(max(0.0, next_t - self.loop.time()))

    # ================================================================== control
    def on_inject(self, name: str) -> None:
        if name == "occlusion" and self._armed():
            self._latch_fault(Code.OCCLUSION)
        elif name in ("empty", "cartridge_missing"):
            self._check_conditions()

    def on_clear(self, name: str) -> None:
        if name == "occlusion":
            self._release_pressure()

    def set_input(self, name: str, value: float) -> None:
        if name == "reservoir_ul":
            self.reservoir_x10 = round(value * 10)
            self._check_conditions()
        elif name == "viscosity":
            self.viscosity = value
        elif name == "over_delivery":
            self.over_delivery = value

    def op_trigger(self, req: dict[str, Any]) -> dict[str, Any]:
        hold = req.get("hold_s", 1.0)
        if isinstance(hold, bool) or not isinstance(hold, (int, float)) or not 0 <= hold <= self.MAX_HOLD_S:
            raise ControlError(f"'hold_s' must be a number within 0..{self.MAX_HOLD_S:g}")
        return {"trigger": self._pull(float(hold))}

    def op_auto_trigger(self, req: dict[str, Any]) -> dict[str, Any]:
        rate = req.get("rate_hz")
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= self.MAX_AUTO_HZ:
            raise ControlError(f"'rate_hz' must be a number within 0..{self.MAX_AUTO_HZ:g} (0 stops)")
        if self._auto_task is not None:
            self._auto_task.cancel()
            self._auto_task = None
        self.auto_trigger_hz = float(rate)
        if rate > 0:
            self._auto_task = self.spawn(self._auto_trigger(float(rate)), name="inj-auto-trigger")
        return {"auto_trigger_hz": self.auto_trigger_hz}

    def snapshot(self) -> dict[str, Any]:
        return {
            "output_on": self._armed(),
            "state": self.state.name.lower(),
            "state_code": int(self.state),
            "fault": self.fault,
            "fault_text": code_text(self.fault) if self.fault else "",
            "shots": self.shots,
            "volume_ul": self.volume_total_x10 / 10,
            "reservoir_ul": self.reservoir_x10 / 10,
            "cap_ul": self.cap_x10 / 10,
            "pressure_kpa": round(self.pressure_kpa(), 1),
            "volume_set_ul": self.volume_set_x10 / 10,
            "depth_set_mm": self.depth_set_x10 / 10,
            "mode": self.mode.name.lower(),
            "rate": self.rate,
            "viscosity": self.viscosity,
            "over_delivery": self.over_delivery,
            "auto_trigger_hz": self.auto_trigger_hz,
            "serial": self.serial,
            "requests": dict(self.requests),
        }
