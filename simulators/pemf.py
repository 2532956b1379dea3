"""PEMF-1 pulsed electromagnetic field emitter simulator (shared/icd/pemf-1.md).

Physics, on the simulator's clock:
- The coil current follows the waveform (numpy-sampled at >= 2 kHz and >= 50 samples
  per period): sine bipolar, square +/- half periods, trapezoid 10 % rise, 30 % flat,
  10 % fall, 50 % off. The drive is set for a 2.0 ohm coil at 2 mT per ampere, so the
  real current scales with 2.0 / coil_ohm; ``coil_open`` makes the coil 1 Mohm.
- The pickup coil sees the field (0.5 % noise); ``field_drift`` makes it 60 % of
  the set peak. FIELD_MEAS is the peak of |B| over the last second; COIL_CURRENT the
  RMS of the current over the last max(1 s, one period) while on, 0 when off.
- Faults while on: current more than 30 % off the expected RMS -> 2; once a whole
  period has run, the measured peak over max(1 s, one period) more than 25 % off
  PEAK_FIELD -> 3 (current is checked first). Coil over 45.0 degC -> 1 at any time.
- Coil heating I^2 R with a first-order model (0.4 degC/W, tau 60 s): a sine or
  square at 20 mT trips fault 1 within a few minutes. ``overheat`` adds a fast
  (tau 0.2 s) +30 degC excess that vanishes as fast when cleared.
- PULSES = whole periods since the start (one pulse per period); the run stops itself
  exactly at DURATION.
"""

from __future__ import annotations

import collections
import math
from typing import Any, ClassVar

import numpy as np

from drivers.pemf import FAULT_TEXTS
from simulators.modbus_device import Field, ModbusDeviceSimulator

MODEL = 0x5031  # "P1"
FIRMWARE = 101  # 1.01

SINE, SQUARE, TRAPEZOID = 0, 1, 2
WAVEFORM_NAMES = {SINE: "sine", SQUARE: "square", TRAPEZOID: "trapezoid"}
#: RMS of one period of each unit waveform
SHAPE_RMS = {SINE: math.sqrt(0.5), SQUARE: 1.0, TRAPEZOID: math.sqrt(0.1 / 3 + 0.3 + 0.1 / 3)}

NOMINAL_OHM = 2.0
MT_PER_A = 2.0
OPEN_OHM = 1e6
CURRENT_BAND = 0.30
FIELD_LIMIT = 0.25
DRIFT_GAIN = 0.6
NOISE = 0.005
COIL_LIMIT_C = 45.0
C_PER_W = 0.4
COIL_TAU_S = 60.0
FAULT_TAU_S = 0.2
OVERHEAT_EXCESS_C = 30.0
MIN_RATE_HZ = 2000.0
SAMPLES_PER_PERIOD = 50
HISTORY_S = 10.0  # the longest period (0.1 Hz)


def waveform(kind: int, phase: np.ndarray) -> np.ndarray:
    """The unit waveform (-1..1) at ``phase`` (0..1 within a period)."""
    if kind == SINE:
        return np.sin(2.0 * np.pi * phase)
    if kind == SQUARE:
        return np.where(phase < 0.5, 1.0, -1.0)
    return np.select(
        [phase < 0.1, phase < 0.4, phase < 0.5],
        [phase / 0.1, np.ones_like(phase), (0.5 - phase) / 0.1],
        default=0.0,
    )


def _approach(value: float, target: float, dt: float, tau: float) -> float:
    return target + (value - target) * math.exp(-dt / tau)


class PemfSimulator(ModbusDeviceSimulator):
    kind: ClassVar[str] = "pemf"
    fault_names: ClassVar[tuple[str, ...]] = ("coil_open", "overheat", "field_drift", "stall", "drop_reply")
    inputs: ClassVar[dict[str, tuple[float, float]]] = {
        "coil_ohm": (0.05, 100000.0),
        "ambient_c": (0.0, 60.0),
    }
    fields: ClassVar[tuple[Field, ...]] = (
        Field("WAVEFORM", 0, 0, 2, TRAPEZOID),
        Field("FREQ", 1, 1, 1000, 150),
        Field("PEAK_FIELD", 2, 1, 2000, 200),
        Field("DURATION", 3, 1, 36000, 6000, width=2),
        Field("WATCHDOG_MS", 5, 200, 10000, 2000),
        Field("HEARTBEAT", 6, 0, 0xFFFF, 0),
    )
    setpoint_end: ClassVar[int] = 6
    fault_texts: ClassVar[dict[int, str]] = FAULT_TEXTS  # the driver's, from the ICD

    def __init__(self, *, unit: int = 2, seed: int | None = None, **_: Any) -> None:
        super().__init__(unit=unit, seed=seed)
        self.coil_ohm = NOMINAL_OHM
        self.ambient_c = 25.0
        self.coil_base_c = self.ambient_c
        self.coil_excess_c = 0.0
        self.run_elapsed_s = 0.0
        self.done_elapsed_s = 0.0
        self.done_pulses = 0
        #: per physics step while on: (end time, peak |B| mT, integral of I^2 dt, dt)
        self.history: collections.deque[tuple[float, float, float, float]] = collections.deque()
        self.run_started_at = self._t
        self.run_freq_hz = self.frequency_hz  # of the last run: PULSES must not change after it

    # ------------------------------------------------------------------ derived values
    @property
    def frequency_hz(self) -> float:
        return self.value("FREQ") / 10.0

    @property
    def peak_setpoint_mt(self) -> float:
        return self.value("PEAK_FIELD") / 100.0

    @property
    def effective_ohm(self) -> float:
        return OPEN_OHM if self.fault_active("coil_open") else self.coil_ohm

    @property
    def coil_temp_c(self) -> float:
        return self.coil_base_c + self.coil_excess_c

    @property
    def run_pulses(self) -> int:
        return int(math.floor(self.run_elapsed_s * self.run_freq_hz + 1e-9))

    def _current_ratio(self) -> float:
        """Real current / intended current, from the coil's resistance."""
        return NOMINAL_OHM / self.effective_ohm

    def _window(self, seconds: float) -> list[tuple[float, float, float, float]]:
        since = max(self._t - seconds, self.run_started_at)
        return [h for h in self.history if h[0] > since]

    def field_meas_mt(self) -> float:
        """Peak over the last second, with the pickup coil's noise: one draw per reading,
        so the peak is not biased upwards (a draw per sample made it read 1-2 % high)."""
        recent = [h for h in self.history if h[0] > self._t - 1.0]
        peak = max((h[1] for h in recent), default=0.0)
        return peak * (1.0 + float(self.rng.normal(0.0, NOISE))) if peak > 0 else 0.0

    def coil_current_a(self) -> float:
        if not self.output_on:
            return 0.0
        # weighted by time, not by sample: steps are as long as the requests make them
        recent = self._window(max(1.0, 1.0 / self.frequency_hz))
        span = sum(h[3] for h in recent)
        return math.sqrt(sum(h[2] for h in recent) / span) if span > 0 else 0.0

    # ------------------------------------------------------------------ physics
    def step(self, dt: float) -> None:
        if dt <= 0:
            return
        heat_w = 0.0
        finished = False
        if self.output_on:
            f = self.frequency_hz
            kind = self.value("WAVEFORM")
            duration = self.value("DURATION") / 10.0
            run_dt = min(dt, max(0.0, duration - self.run_elapsed_s))
            if run_dt > 0:
                n = max(1, math.ceil(run_dt * max(MIN_RATE_HZ, SAMPLES_PER_PERIOD * f)))
                t = self.run_elapsed_s + run_dt * np.arange(1, n + 1) / n
                unit = waveform(kind, np.mod(t * f, 1.0))
                i_peak = self.peak_setpoint_mt / MT_PER_A * self._current_ratio()
                current = i_peak * unit
                gain = DRIFT_GAIN if self.fault_active("field_drift") else 1.0
                field = current * (MT_PER_A * gain)  # the pickup coil's noise is added when read
                self.history.append((self._t + run_dt, float(np.max(np.abs(field))),
                                     float(np.mean(current * current)) * run_dt, run_dt))
                i_rms = i_peak * SHAPE_RMS[kind]
                heat_w = i_rms * i_rms * self.effective_ohm * run_dt / dt
            self.run_elapsed_s += run_dt
            if self.run_elapsed_s >= duration - 1e-9:
                self.run_elapsed_s = duration
                finished = True
        while self.history and self.history[0][0] < self._t - HISTORY_S:
            self.history.popleft()
        self.coil_base_c = _approach(self.coil_base_c, self.ambient_c + C_PER_W * heat_w, dt, COIL_TAU_S)
        # injected overheating takes the coil past its limit whatever the ambient
        excess = (max(OVERHEAT_EXCESS_C, COIL_LIMIT_C + 10.0 - self.coil_base_c)
                  if self.fault_active("overheat") else 0.0)
        self.coil_excess_c = _approach(self.coil_excess_c, excess, dt, FAULT_TAU_S)
        self._check_faults(dt)
        if finished and self.output_on:
            self.finish_run()

    def _check_faults(self, dt: float) -> None:
        if self.state == 3:
            return
        if self.coil_temp_c > COIL_LIMIT_C:
            self.latch_fault(1)
            return
        if not self.output_on:
            return
        if abs(self._current_ratio() - 1.0) > CURRENT_BAND:
            self.latch_fault(2)
            return
        period = 1.0 / self.frequency_hz
        if self.run_elapsed_s >= period:
            recent = self._window(max(1.0, period) + dt)
            peak = max((h[1] for h in recent), default=0.0)
            if abs(peak - self.peak_setpoint_mt) > FIELD_LIMIT * self.peak_setpoint_mt:
                self.latch_fault(3)

    # ------------------------------------------------------------------ hooks
    def fault_at_start(self) -> int:
        return 1 if self.coil_temp_c > COIL_LIMIT_C else 0

    def begin_run(self) -> None:
        self.run_elapsed_s = 0.0
        self.run_started_at = self._t
        self.run_freq_hz = self.frequency_hz

    def end_run(self) -> None:
        self.done_elapsed_s += self.run_elapsed_s
        self.done_pulses += self.run_pulses

    def fault_cause_present(self, code: int) -> bool:
        if code == 1:
            return self.fault_active("overheat") or self.coil_temp_c > COIL_LIMIT_C
        if code == 2:
            return abs(self._current_ratio() - 1.0) > CURRENT_BAND
        if code == 3:  # injected drift, or a coil far enough off to move the field past 25 %
            return self.fault_active("field_drift") or abs(self._current_ratio() - 1.0) > FIELD_LIMIT
        return False

    def read_input(self, addr: int) -> int | None:
        if addr == 0:
            return self.state
        if addr == 1:
            return self.fault
        if addr == 2:
            return round(self.field_meas_mt() * 100.0)
        if addr in (3, 4):
            elapsed = int(self.run_elapsed_s * 10.0 + 1e-6)
            return elapsed >> 16 if addr == 3 else elapsed & 0xFFFF
        if addr == 5:
            return round(self.coil_temp_c * 10.0)
        if addr == 6:
            return round(self.coil_current_a() * 100.0)
        if addr in (7, 8):
            pulses = self.run_pulses
            return pulses >> 16 if addr == 7 else pulses & 0xFFFF
        if addr == 100:
            return MODEL
        if addr == 101:
            return FIRMWARE
        return None

    def set_input(self, name: str, value: float) -> None:
        setattr(self, name, value)

    def snapshot(self) -> dict[str, Any]:
        snap = self.base_snapshot()
        live = self.output_on
        snap.update(
            pulses=self.done_pulses + (self.run_pulses if live else 0),
            elapsed_s=self.done_elapsed_s + (self.run_elapsed_s if live else 0.0),
            run={"pulses": self.run_pulses, "elapsed_s": self.run_elapsed_s},
            waveform=WAVEFORM_NAMES[self.value("WAVEFORM")],
            frequency_hz=self.frequency_hz,
            peak_field_mt=self.peak_setpoint_mt,
            field_mt=self.field_meas_mt(),
            coil_current_a=self.coil_current_a(),
            coil_temp_c=self.coil_temp_c,
            coil_ohm=self.coil_ohm,
            ambient_c=self.ambient_c,
            inputs={"coil_ohm": self.coil_ohm, "ambient_c": self.ambient_c},
        )
        return snap
