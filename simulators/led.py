"""LED-1 photobiomodulation emitter simulator (shared/icd/led-1.md).

Physics, on the simulator's clock:
- Measured irradiance follows the setpoint with 0.5 % noise; an open LED string
  (``led_open``) halves it, so it deviates more than 20 % and fault 3 latches.
- Fluence is the integral of measured irradiance times the duty cycle over time
  (mW/cm2 x s = mJ/cm2). The run ends exactly at DURATION or exactly at
  FLUENCE_TARGET (the last step is cut short), then STATE is done and the output off.
  Reading of the ICD: DUTY applies in continuous mode too (the emitter dims by PWM), so
  the delivered fluence always matches irradiance x duty x time.
- First-order thermal models driven by optical power: head -> ambient + 0.25 degC per
  mW/cm2 (tau 30 s), skin -> 33 degC + 0.09 degC per mW/cm2 (tau 90 s), so a long
  exposure at 100 mW/cm2 trips fault 2 after about 3 minutes. Injected overheating
  adds a fast (tau 0.2 s) excess temperature that vanishes as fast when cleared.
- ``applicator_removed`` makes DISTANCE_MM read 80 mm; above 30 mm at the start the
  start latches fault 4 (the ICD's "at start": moving away during a run does not).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from drivers.led import FAULT_TEXTS
from simulators.modbus_device import Field, ModbusDeviceSimulator

MODEL = 0x4C31  # "L1"
FIRMWARE = 102  # 1.02
CHANNEL_NM = (630, 660, 810, 850)

HEAD_LIMIT_C = 55.0
SKIN_LIMIT_C = 41.0
DEVIATION_LIMIT = 0.20
DISTANCE_LIMIT_MM = 30.0
REMOVED_DISTANCE_MM = 80.0

HEAD_TAU_S = 30.0
HEAD_C_PER_MW = 0.25
SKIN_TAU_S = 90.0
SKIN_C_PER_MW = 0.09
SKIN_BASE_C = 33.0
FAULT_TAU_S = 0.2
HEAD_FAULT_EXCESS_C = 40.0
SKIN_FAULT_EXCESS_C = 12.0
NOISE = 0.005
OPEN_STRING_GAIN = 0.5


def _approach(value: float, target: float, dt: float, tau: float) -> float:
    """Exact first-order step of ``value`` towards ``target`` over ``dt``."""
    return target + (value - target) * math.exp(-dt / tau)


class LedSimulator(ModbusDeviceSimulator):
    kind: ClassVar[str] = "led"
    fault_names: ClassVar[tuple[str, ...]] = (
        "head_overheat", "skin_overheat", "led_open", "applicator_removed", "stall", "drop_reply",
    )
    inputs: ClassVar[dict[str, tuple[float, float]]] = {
        "distance_mm": (0.0, 1000.0),
        "ambient_c": (0.0, 60.0),
    }
    fields: ClassVar[tuple[Field, ...]] = (
        Field("CHANNEL", 0, 0, 3, 1),
        Field("IRRADIANCE", 1, 10, 1000, 300),
        Field("DURATION", 2, 0, 36000, 6000, width=2),
        Field("FLUENCE_TARGET", 4, 0, 100000, 0, width=2),
        Field("PULSE_HZ", 6, 0, 1000, 0),
        Field("DUTY", 7, 10, 100, 100),
        Field("WATCHDOG_MS", 8, 200, 10000, 2000),
        Field("HEARTBEAT", 9, 0, 0xFFFF, 0),
    )
    setpoint_end: ClassVar[int] = 9
    fault_texts: ClassVar[dict[int, str]] = FAULT_TEXTS  # the driver's, from the ICD

    def __init__(self, *, unit: int = 1, seed: int | None = None, **_: Any) -> None:
        super().__init__(unit=unit, seed=seed)
        self.distance_mm = 10.0
        self.ambient_c = 25.0
        self.head_base_c = self.ambient_c
        self.skin_base_c = self._skin_rest()
        self.head_excess_c = 0.0
        self.skin_excess_c = 0.0
        self.irradiance_meas = 0.0  # mW/cm2, while on
        self.run_elapsed_s = 0.0
        self.run_fluence = 0.0  # mJ/cm2
        self.done_elapsed_s = 0.0  # totals of finished runs
        self.done_fluence = 0.0

    # ------------------------------------------------------------------ derived values
    def _skin_rest(self) -> float:
        return SKIN_BASE_C + 0.1 * (self.ambient_c - 25.0)

    @property
    def head_temp_c(self) -> float:
        return self.head_base_c + self.head_excess_c

    @property
    def skin_temp_c(self) -> float:
        return self.skin_base_c + self.skin_excess_c

    @property
    def effective_distance_mm(self) -> float:
        return REMOVED_DISTANCE_MM if self.fault_active("applicator_removed") else self.distance_mm

    # ------------------------------------------------------------------ physics
    def step(self, dt: float) -> None:
        power = 0.0  # mW/cm2 delivered on average over this step
        finished = False
        if self.output_on and dt > 0:
            setpoint = self.value("IRRADIANCE") / 10.0
            duty = self.value("DUTY") / 100.0
            gain = OPEN_STRING_GAIN if self.fault_active("led_open") else 1.0
            self.irradiance_meas = max(0.0, setpoint * gain * (1.0 + self.rng.normal(0.0, NOISE)))
            rate = self.irradiance_meas * duty
            duration = self.value("DURATION") / 10.0
            target = float(self.value("FLUENCE_TARGET"))
            run_dt = dt
            if duration > 0:
                run_dt = min(run_dt, max(0.0, duration - self.run_elapsed_s))
            if target > 0 and rate > 0:
                run_dt = min(run_dt, max(0.0, (target - self.run_fluence) / rate))
            self.run_elapsed_s += run_dt
            self.run_fluence += rate * run_dt
            power = rate * run_dt / dt
            if duration > 0 and self.run_elapsed_s >= duration - 1e-9:
                self.run_elapsed_s = duration
                finished = True
            if target > 0 and self.run_fluence >= target - 1e-9:
                self.run_fluence = target
                finished = True
        if dt > 0:
            self.head_base_c = _approach(self.head_base_c, self.ambient_c + HEAD_C_PER_MW * power, dt, HEAD_TAU_S)
            self.skin_base_c = _approach(self.skin_base_c, self._skin_rest() + SKIN_C_PER_MW * power, dt, SKIN_TAU_S)
            head_excess = HEAD_FAULT_EXCESS_C if self.fault_active("head_overheat") else 0.0
            skin_excess = SKIN_FAULT_EXCESS_C if self.fault_active("skin_overheat") else 0.0
            self.head_excess_c = _approach(self.head_excess_c, head_excess, dt, FAULT_TAU_S)
            self.skin_excess_c = _approach(self.skin_excess_c, skin_excess, dt, FAULT_TAU_S)
        if finished:
            self.finish_run()
        self._check_faults()

    def _check_faults(self) -> None:
        if self.state == 3:  # already latched: the first cause stays reported
            return
        if self._head_over():
            self.latch_fault(1)
        elif self._skin_over():
            self.latch_fault(2)
        elif self.output_on:
            setpoint = self.value("IRRADIANCE") / 10.0
            if abs(self.irradiance_meas - setpoint) > DEVIATION_LIMIT * setpoint:
                self.latch_fault(3)

    # ------------------------------------------------------------------ hooks
    def start_allowed(self) -> bool:
        return (self.value("DURATION") != 0) != (self.value("FLUENCE_TARGET") != 0)

    # The limits are judged on the values as the registers read them (0.1 degC, 1 mm), so
    # a host reading HEAD_TEMP, SKIN_TEMP or DISTANCE_MM never sees a fault below its limit.
    def _head_over(self) -> bool:
        return round(self.head_temp_c * 10.0) > round(HEAD_LIMIT_C * 10.0)

    def _skin_over(self) -> bool:
        return round(self.skin_temp_c * 10.0) > round(SKIN_LIMIT_C * 10.0)

    def _too_far(self) -> bool:
        return round(self.effective_distance_mm) > DISTANCE_LIMIT_MM

    def fault_at_start(self) -> int:
        if self._head_over():
            return 1
        if self._skin_over():
            return 2
        if self._too_far():
            return 4
        return 0

    def begin_run(self) -> None:
        self.run_elapsed_s = 0.0
        self.run_fluence = 0.0
        self.irradiance_meas = self.value("IRRADIANCE") / 10.0

    def end_run(self) -> None:
        self.done_elapsed_s += self.run_elapsed_s
        self.done_fluence += self.run_fluence
        self.irradiance_meas = 0.0

    def fault_cause_present(self, code: int) -> bool:
        if code == 1:
            return self.fault_active("head_overheat") or self._head_over()
        if code == 2:
            return self.fault_active("skin_overheat") or self._skin_over()
        if code == 3:
            return self.fault_active("led_open")
        if code == 4:
            return self._too_far()
        return False

    def read_input(self, addr: int) -> int | None:
        if addr == 0:
            return self.state
        if addr == 1:
            return self.fault
        if addr == 2:
            return round(self.irradiance_meas * 10.0) if self.output_on else 0
        if addr in (3, 4):
            elapsed = int(self.run_elapsed_s * 10.0 + 1e-6)
            return elapsed >> 16 if addr == 3 else elapsed & 0xFFFF
        if addr in (5, 6):
            fluence = int(self.run_fluence + 1e-6)
            return fluence >> 16 if addr == 5 else fluence & 0xFFFF
        if addr == 7:
            return round(self.head_temp_c * 10.0)
        if addr == 8:
            return round(self.skin_temp_c * 10.0)
        if addr == 9:
            return round(self.effective_distance_mm)
        if addr == 100:
            return MODEL
        if addr == 101:
            return FIRMWARE
        if 102 <= addr <= 105:
            return CHANNEL_NM[addr - 102]
        return None

    def set_input(self, name: str, value: float) -> None:
        setattr(self, name, value)

    def snapshot(self) -> dict[str, Any]:
        snap = self.base_snapshot()
        run_fluence = self.run_fluence
        run_elapsed = self.run_elapsed_s
        live = self.output_on
        snap.update(
            fluence_mj_cm2=self.done_fluence + (run_fluence if live else 0.0),
            elapsed_s=self.done_elapsed_s + (run_elapsed if live else 0.0),
            run={"fluence_mj_cm2": run_fluence, "elapsed_s": run_elapsed},
            irradiance_mw_cm2=self.irradiance_meas if live else 0.0,
            wavelength_nm=CHANNEL_NM[self.value("CHANNEL")],
            head_temp_c=self.head_temp_c,
            skin_temp_c=self.skin_temp_c,
            distance_mm=self.distance_mm,
            distance_meas_mm=self.effective_distance_mm,
            inputs={"distance_mm": self.distance_mm, "ambient_c": self.ambient_c},
            ambient_c=self.ambient_c,
        )
        return snap
