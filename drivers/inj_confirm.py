"""INJ-1 writes whose reply is lost, settled by STATUS (a part of :class:`drivers.inj.InjDriver`).

A reply that never comes (lost, or damaged on the wire: a frame with a bad CRC is never
delivered) does not say the request was not done: the gun may have done it and only its
reply was lost. A reply that comes readable but wrong (``ProtocolError``) is not a lost
reply and is not settled here. The ICD lets a host retry
a read-only request and forbids retrying ARM blindly ("read STATUS first"); the same
rule is kept for every write here: STATUS first, then the write is taken as done, sent
once more when sending it again cannot deliver more than planned, or the error stands.

- SET_PARAMS: the gun IDLE with the volume and depth sent (and the mode and rate the gun
  last acknowledged, which STATUS does not show) -> done; the gun IDLE otherwise -> sent
  once more (parameters are a state: sending them twice is sending them once); the gun
  armed, firing or in fault -> the error stands.
- SET_CAP: STATUS does not show the cap. The gun IDLE (no shot can have used the cap) or
  a cap of 0 (it allows nothing) -> sent once more; armed or firing with a cap above 0 ->
  the error stands (a shot may have used part of the cap; sending it again would give
  that part back).
- CLEAR_FAULT: no fault and the state not FAULT -> done; else the error stands.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from drivers.base import DeviceFault, DeviceRefused, DeviceTimeout, DriverError
from drivers.inj_frames import Cap, Cmd, Code, Params, State, Status, code_text

log = logging.getLogger("drivers.inj")

#: a write's reply missing: the write may have been done
LOST = (DeviceTimeout,)
_STATE_NAMES = {State.IDLE: "idle", State.ARMED: "armed", State.FIRING: "firing", State.FAULT: "fault"}


def _name(state: int) -> str:
    return _STATE_NAMES.get(state, f"unknown({state})")  # type: ignore[call-overload]


class ConfirmedWrites:
    """SET_PARAMS, SET_CAP and CLEAR_FAULT with a lost reply settled by STATUS (the
    driver's ``_ack``, ``_read_status`` and ``device_id`` are used)."""

    device_id: str
    #: the SET_PARAMS the gun last acknowledged (or that STATUS confirmed), None before any
    _acked_params: Params | None = None

    if TYPE_CHECKING:
        async def _ack(self, cmd: Cmd, payload: bytes = b"", *, retries: int = 0) -> int: ...

        async def _read_status(self) -> Status: ...

    async def _status_after(self, cmd: Cmd, lost: DriverError) -> Status:
        """STATUS after ``cmd`` got no (readable) reply; if it gets none either, ``lost`` stands."""
        try:
            return await self._read_status()
        except DriverError as exc:
            raise lost from exc

    async def _send_params(self, wire: Params) -> None:
        try:
            await self._ack(Cmd.SET_PARAMS, wire.pack())
        except LOST as lost:
            st = await self._status_after(Cmd.SET_PARAMS, lost)
            if st.state != State.IDLE:
                log.warning("%s: SET_PARAMS unanswered (%s) and the gun is %s: not sent again",
                            self.device_id, lost, _name(st.state))
                raise
            last = self._acked_params
            if ((st.volume_x10, st.depth_x10) == (wire.volume_x10, wire.depth_x10) and last is not None
                    and (last.mode, last.rate) == (wire.mode, wire.rate)):
                log.warning("%s: SET_PARAMS unanswered (%s); STATUS shows the gun idle with volume %.1f uL "
                            "and depth %.1f mm as sent: it took", self.device_id, lost,
                            st.volume_x10 / 10, st.depth_x10 / 10)
            else:
                log.warning("%s: SET_PARAMS unanswered (%s); the gun is idle with volume %.1f uL and depth "
                            "%.1f mm: sent once more", self.device_id, lost, st.volume_x10 / 10, st.depth_x10 / 10)
                await self._ack(Cmd.SET_PARAMS, wire.pack())
        self._acked_params = wire

    async def _send_cap(self, x10: int) -> None:
        try:
            await self._ack(Cmd.SET_CAP, Cap(x10).pack())
        except LOST as lost:
            st = await self._status_after(Cmd.SET_CAP, lost)
            if st.state in (State.ARMED, State.FIRING) and x10 != 0:
                log.warning("%s: SET_CAP %.1f uL unanswered (%s) and the gun is %s: not sent again (a shot "
                            "may have used the cap)", self.device_id, x10 / 10, lost, _name(st.state))
                raise
            log.warning("%s: SET_CAP %.1f uL unanswered (%s); the gun is %s: sent once more",
                        self.device_id, x10 / 10, lost, _name(st.state))
            await self._ack(Cmd.SET_CAP, Cap(x10).pack())

    async def _arm_refused(self, refused: DeviceRefused) -> None:
        """ARM refused (NAK 4): when STATUS shows a latched fault, that fault is raised (a
        fault the technician can remove then pauses the session as its event would).

        A gun idle with no fault latched that still may not arm cannot fire: its reservoir
        is empty or its needle cartridge missing (fault 7 or 8, which the gun latches only
        while armed; STATUS has no cartridge field). Both are causes the technician removes
        at the chair, so the refusal is raised as that fault: 7 when STATUS reads the
        reservoir at 0, else 8, its text naming both. Any other refusal stands."""
        if refused.code != Code.NOT_ALLOWED:
            return
        try:
            st = await self._read_status()
        except DriverError:
            return
        if st.state == State.FAULT and st.fault:
            log.warning("%s: ARM refused; STATUS shows fault %d (%s)", self.device_id, st.fault, code_text(st.fault))
            raise DeviceFault(st.fault, code_text(st.fault)) from refused
        if st.state == State.IDLE and not st.fault:
            code = Code.EMPTY if st.reservoir_x10 == 0 else Code.CARTRIDGE_MISSING
            log.warning("%s: ARM refused with the gun idle and no fault latched; taken as %d (%s)", self.device_id,
                        code, code_text(code))
            raise DeviceFault(int(code), f"the gun will not arm: {code_text(code)} (check the needle cartridge "
                                         f"and the reservoir)") from refused

    async def _send_clear_fault(self) -> None:
        try:
            await self._ack(Cmd.CLEAR_FAULT)
        except LOST as lost:
            st = await self._status_after(Cmd.CLEAR_FAULT, lost)
            if st.fault or st.state == State.FAULT:
                log.warning("%s: CLEAR_FAULT unanswered (%s) and the gun shows fault %d (%s)",
                            self.device_id, lost, st.fault, _name(st.state))
                raise
            log.warning("%s: CLEAR_FAULT unanswered (%s); STATUS shows no fault, the gun %s: it took",
                        self.device_id, lost, _name(st.state))


__all__ = ["LOST", "ConfirmedWrites"]
