"""Driver of the INJ-1 mesotherapy injector gun (shared/icd/inj-1.md).

The gun speaks binary frames (``drivers.inj_frames``) over a serial line, or the same
bytes over TCP for the simulator. One request is in flight at a time; its reply is
matched by SEQ. The host numbers requests 1..255 and wraps back to 1: SEQ 0 is left to
the gun's unsolicited events (SHOT, FAULT, TRIGGER_REFUSED), so a reply can never be
mistaken for an event.

Rules this driver keeps:

- a reply must come within 200 ms, else :class:`DeviceTimeout`;
- read-only requests (PING, GET_STATUS, HEARTBEAT) are retried up to twice, each time
  with a fresh SEQ; a reply carrying an older SEQ is stale and ignored;
- ARM is never retried blindly: when its reply is missing or unreadable the driver reads
  STATUS to learn whether the gun armed;
- the other writes whose reply is missing are settled by STATUS too
  (:mod:`drivers.inj_confirm`): SET_PARAMS took if the gun is idle with the volume and
  depth sent (and the mode and rate the gun last acknowledged), else it is sent once
  more while the gun is idle; SET_CAP is sent once more only when no shot can have used
  the cap meanwhile (the gun idle, or a cap of 0); CLEAR_FAULT took if the gun shows no
  fault;
- a NAK becomes :class:`DeviceRefused` with the ICD code (3 out of range, 4 not allowed), but
  NAK 4 from a gun in a known fault is that :class:`DeviceFault` (ARM: STATUS tells);
- the cap is rounded down to 0.1 uL, never up.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

from pydantic import BaseModel

from drivers.base import (
    DeviceFault,
    DeviceRefused,
    DeviceStatus,
    DeviceTimeout,
    Device,
    DriverError,
    Identity,
    NotConnected,
    Preempted,
    ProtocolError,
    SafeStateResult,
    timed_safe_state,
)
from drivers.endpoints import Endpoint
from drivers.inj_confirm import ConfirmedWrites
from drivers.inj_frames import (
    RECOVERY_HINTS,
    REFUSAL_TEXT,
    Ack,
    Cmd,
    Code,
    FaultEvent,
    Frame,
    FrameParser,
    Info,
    Mode,
    Nak,
    Params,
    PAYLOAD_TYPES,
    PayloadError,
    Shot,
    State,
    Status,
    TriggerRefused,
    code_text,
    encode,
)
from drivers.inj_params import InjParams
from drivers.reply_timer import ReplyTimer
from drivers.serial_link import SerialLink

log = logging.getLogger(__name__)

STATE_NAMES = {State.IDLE: "idle", State.ARMED: "armed", State.FIRING: "firing", State.FAULT: "fault"}
MODES: dict[str, Mode] = {"single": Mode.SINGLE, "burst": Mode.BURST, "nappage": Mode.NAPPAGE}
READ_ONLY_RETRIES = 2
#: the reply each request expects besides NAK
EXPECTED_REPLY: dict[int, int] = {Cmd.PING: int(Cmd.INFO), Cmd.GET_STATUS: int(Cmd.STATUS)}
_ACK, _NAK, _ARMED, _FIRING = int(Cmd.ACK), int(Cmd.NAK), int(State.ARMED), int(State.FIRING)


def state_name(code: int) -> str:
    """The lower-case state name DeviceStatus uses, for any byte the gun may send."""
    return STATE_NAMES.get(code, f"unknown({code})")  # type: ignore[call-overload]


class InjDriver(ConfirmedWrites, Device):
    kind = "inj"
    heartbeat_interval = 0.3
    recovery_hints = RECOVERY_HINTS

    def __init__(self, endpoint: Endpoint | str, *, device_id: str | None = None, reply_timeout: float = 0.2) -> None:
        super().__init__(endpoint, device_id=device_id)
        self.reply_timeout = reply_timeout
        self.identity: Identity | None = None
        self.params: InjParams | None = None
        #: diagnostics: unreadable frames (bad CRC, bad LEN, cut short) and replies with a stale SEQ
        self.bad_frames = 0
        self.stale_replies = 0
        self._link: SerialLink | None = None
        self._parser = FrameParser()
        self._lock = asyncio.Lock()
        self._seq = 0
        self._pending: tuple[int, asyncio.Future[Frame]] | None = None
        self._reply_timer = ReplyTimer()
        #: the fault the gun last announced (FAULT event) or STATUS showed; None when none
        self._fault: int | None = None

    # ================================================================== lifetime
    async def connect(self) -> None:
        if self.connected:
            return
        link = SerialLink(self.endpoint, self._on_data, self._on_lost)
        await link.open()
        self._parser.reset()
        self._acked_params = None  # a gun met again may have been switched off meanwhile
        self._fault = None
        self._link = link
        self.connected = True

    async def close(self) -> None:
        await super().close()
        link, self._link = self._link, None
        if link is not None:
            link.close()
        self._reply_timer.cancel()
        self._fail_pending(NotConnected(f"{self.device_id}: closed"))

    def _on_lost(self, exc: Exception | None) -> None:
        self.connected = False
        self._link = None
        self._energised = False  # the heartbeat loop ends on its next wake-up
        self._fail_pending(NotConnected(f"{self.device_id}: connection lost: {exc}"))
        self._emit("connection_lost", error=str(exc) if exc else "closed by peer")

    def _fail_pending(self, exc: Exception) -> None:
        if self._pending is not None and not self._pending[1].done():
            self._pending[1].set_exception(exc)

    @property
    def noise_bytes(self) -> int:
        """Bytes received outside any frame (diagnostics: line noise, a damaged start byte)."""
        return self._parser.skipped

    # ================================================================== receiving
    def _on_data(self, data: bytes) -> None:
        frame = self._parser.whole_frame(data)
        if frame is not None:  # the usual case: one reply, one chunk
            pending = self._pending
            if pending is not None and frame.seq == pending[0] and not pending[1].done():
                pending[1].set_result(frame)
                return
            items: list[Frame | Exception] = [frame]
        else:
            items = self._parser.feed(data)  # type: ignore[assignment]
        for item in items:
            if isinstance(item, Frame):
                try:
                    self._on_frame(item)
                except Exception:  # a bad frame must never kill the reader
                    log.exception("%s: handling %s failed", self.device_id, item)
            else:
                self.bad_frames += 1
                log.debug("%s: %s", self.device_id, item)

    def _on_frame(self, frame: Frame) -> None:
        if frame.is_event:
            self._on_event(frame)
            return
        pending = self._pending
        if pending is not None and frame.seq == pending[0] and not pending[1].done():
            pending[1].set_result(frame)
        else:
            self.stale_replies += 1
            log.debug("%s: ignoring stale frame seq %d cmd 0x%02X", self.device_id, frame.seq, frame.cmd)

    def _on_event(self, frame: Frame) -> None:
        try:
            if frame.cmd == Cmd.SHOT:
                shot = Shot.unpack(frame.payload)
                self._emit("shot", index=shot.shot_index, volume_ul=shot.volume_x10 / 10,
                           depth_mm=shot.depth_x10 / 10, t_ms=shot.t_ms)
            elif frame.cmd == Cmd.FAULT:
                code = FaultEvent.unpack(frame.payload).code
                self._energised = False  # the gun disarmed itself; the heartbeat loop ends
                self._fault = code
                self._emit("fault", code=code, text=code_text(code))
            elif frame.cmd == Cmd.TRIGGER_REFUSED:
                reason = TriggerRefused.unpack(frame.payload).reason
                self._emit("trigger_refused", reason=reason, text=REFUSAL_TEXT.get(reason, f"reason {reason}"))
        except PayloadError as exc:
            self.bad_frames += 1
            log.debug("%s: %s", self.device_id, exc)

    # ================================================================== requests
    def _next_seq(self) -> int:
        self._seq = self._seq % 255 + 1  # 1..255; 0 belongs to events
        return self._seq

    async def _request(self, cmd: Cmd, payload: bytes = b"", *, retries: int = 0, gate: int | None = None) -> Any:
        """Send one request and return its reply's typed payload (Ack, Info or Status).

        A NAK raises DeviceRefused; a reply of the wrong type or size is a ProtocolError,
        retried like a timeout when ``retries`` allows. ``gate``: an ARM's start latch,
        checked again on the link right before the frame is written (decision 0015).
        """
        error: DriverError | None = None
        async with self._lock:
            for _ in range(retries + 1):
                link = self._link
                if link is None or not self.connected:
                    raise NotConnected(f"{self.device_id}: not connected")
                if gate is not None and self._preempted_since(gate):
                    raise Preempted(f"{self.device_id}: a safe state came after the cap: {cmd.name} not sent")
                seq = self._next_seq()
                fut: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
                self._pending = (seq, fut)
                try:
                    link.write(encode(seq, cmd, payload))
                    self._reply_timer.watch(fut, self.reply_timeout)  # no timer per request
                    frame = await fut
                except TimeoutError:
                    error = DeviceTimeout(f"{self.device_id}: no reply to {cmd.name} (seq {seq}) "
                                          f"within {self.reply_timeout * 1000:.0f} ms")
                    continue
                finally:
                    self._pending = None
                    self._reply_timer.clear()
                try:
                    return self._check_reply(cmd, frame)
                except ProtocolError as exc:
                    error = exc
        raise error if error is not None else DeviceTimeout(f"{self.device_id}: {cmd.name} not sent")

    def _check_reply(self, cmd: Cmd, frame: Frame) -> Any:
        reply = frame.cmd
        if reply == _NAK:
            code = Nak.unpack(frame.payload).code
            if code == Code.NOT_ALLOWED and self._fault is not None and cmd != Cmd.CLEAR_FAULT:
                # refused because the gun faulted (its FAULT event came first): the fault is the
                # answer (CLEAR_FAULT's refusal means the cause is still there: a refusal)
                raise DeviceFault(self._fault, code_text(self._fault))
            raise DeviceRefused(code, f"{cmd.name}: {code_text(code)}")
        expected = EXPECTED_REPLY.get(cmd, _ACK)
        if reply != expected:
            raise ProtocolError(f"{self.device_id}: {cmd.name} answered with 0x{reply:02X}, "
                                f"expected 0x{expected:02X}")
        return PAYLOAD_TYPES[reply].unpack(frame.payload)  # type: ignore[attr-defined]

    async def _ack(self, cmd: Cmd, payload: bytes = b"", *, retries: int = 0, gate: int | None = None) -> int:
        """Send a request answered by ACK; returns the state the ACK carries."""
        ack: Ack = await self._request(cmd, payload, retries=retries, gate=gate)
        return ack.state

    async def _read_status(self, retries: int = READ_ONLY_RETRIES) -> Status:
        status: Status = await self._request(Cmd.GET_STATUS, retries=retries)
        return status

    # ================================================================== the Device interface
    async def identify(self) -> Identity:
        info: Info = await self._request(Cmd.PING, retries=READ_ONLY_RETRIES)
        self.identity = Identity(vendor="", model=f"INJ-{info.model}", serial=info.serial,
                                 firmware=str(info.firmware))
        return self.identity

    async def configure(self, params: BaseModel) -> None:
        """SET_PARAMS. The gun refuses it (DeviceRefused 4) while armed: disarm first."""
        p = params if isinstance(params, InjParams) else InjParams.model_validate(params.model_dump())
        self._settings_sent()  # a safe state from here on voids the next ARM (decision 0015)
        wire = Params(round(p.volume_ul * 10), round(p.depth_mm * 10), MODES[p.mode], p.rate_hz)
        await self._send_params(wire)  # a lost reply: STATUS decides (drivers.inj_confirm)
        self.params = p

    async def set_cap(self, volume_ul: float) -> None:
        """SET_CAP: what the gun may still deliver from now on (rounded down to 0.1 uL)."""
        if isinstance(volume_ul, bool) or not isinstance(volume_ul, (int, float)) or not math.isfinite(volume_ul):
            raise ValueError("volume_ul must be a finite number")
        x10 = math.floor(volume_ul * 10 + 1e-9)
        if not 0 <= x10 <= 0xFFFFFFFF:
            raise ValueError("volume_ul must be within 0..429496729.5")
        self._settings_sent()  # the next ARM is for this cap; a safe state from here on voids it
        await self._send_cap(x10)  # a lost reply: STATUS decides (drivers.inj_confirm)

    async def start(self) -> None:
        """ARM. On a missing or unreadable reply, STATUS tells whether it armed (ARM is not retried).

        Never after a safe state that came since the last cap or parameters were sent
        (:class:`Preempted`, nothing sent: a step that outlived a stop must not leave the gun
        armed; decision 0015). An ARM already written when a safe state begins is undone by
        that safe state's DISARM, written behind it."""
        gate = self._start_gate("ARM")
        try:
            state = await self._ack(Cmd.ARM, gate=gate)
        except DeviceRefused as exc:
            await self._arm_refused(exc)  # STATUS says why: a latched fault is the answer
            raise
        except Preempted:
            raise
        except (DeviceTimeout, ProtocolError) as exc:
            if self._preempted_since(gate):  # the safe state's DISARM and read-back decide
                raise Preempted(f"{self.device_id}: a safe state came while arming ({exc})") from exc
            status = await self.status()
            if not status.output_on:
                raise DeviceTimeout(f"{self.device_id}: ARM unanswered ({exc}); the gun is {status.state}") from exc
            self._set_energised(True)
            return
        if state not in (State.ARMED, State.FIRING):
            raise ProtocolError(f"{self.device_id}: ARM acknowledged in state {state}")
        if self._preempted_since(gate):  # the safe state's DISARM follows this ARM on the wire
            raise Preempted(f"{self.device_id}: a safe state came while arming: disarmed behind it")
        self._set_energised(True)

    async def stop(self) -> None:
        """DISARM. The heartbeat stops first, so if DISARM is lost the gun's watchdog disarms it."""
        await self._stop_heartbeat()
        await self._ack(Cmd.DISARM)

    async def status(self) -> DeviceStatus:
        st: Status = await self._request(Cmd.GET_STATUS, retries=READ_ONLY_RETRIES)
        state = st.state
        armed = state == _ARMED or state == _FIRING
        if not armed and self._energised:
            self._energised = False  # the gun is not armed (a FAULT event may have been lost)
        fault = st.fault
        self._fault = fault or None
        return DeviceStatus(
            STATE_NAMES.get(state) or state_name(state),
            armed,
            fault or None,
            code_text(fault) if fault else "",
            {
                "shots_total": st.shots_total,
                "volume_total_ul": st.volume_total_x10 / 10,
                "reservoir_ul": st.reservoir_x10 / 10,
                "pressure_kpa": st.pressure_kpa,
                "depth_mm": st.depth_x10 / 10,
                "volume_ul": st.volume_x10 / 10,
            },
        )

    async def clear_fault(self) -> None:
        """CLEAR_FAULT; DeviceRefused(4) while the cause is still present."""
        await self._send_clear_fault()  # a lost reply: STATUS decides (drivers.inj_confirm)
        self._fault = None

    async def heartbeat(self) -> None:
        state = await self._ack(Cmd.HEARTBEAT, retries=READ_ONLY_RETRIES)
        if state not in (State.ARMED, State.FIRING):
            self._energised = False  # nothing left to keep alive

    async def safe_state(self) -> SafeStateResult:
        """DISARM, then confirm by GET_STATUS that the gun is neither armed nor firing."""
        self._safe_state_begins()  # before any await: an ARM under way, or to come, sees it
        return await timed_safe_state(self._safe_state_raw)

    async def _safe_state_raw(self) -> tuple[bool, str]:
        # DISARM on the wire first, before any wait (the link lock, the heartbeat, a
        # reconnect): its reply carries a sequence number no request waits for and is
        # dropped as stale; the DISARM and GET_STATUS below confirm it
        link = self._link
        if link is not None and self.connected:
            try:
                link.write(encode(self._next_seq(), Cmd.DISARM))
            except DriverError:
                pass  # the link is gone: the reconnect below tries again
        await self._stop_heartbeat()
        if not self.connected:
            try:
                await asyncio.wait_for(self.connect(), 0.5)
            except (DriverError, asyncio.TimeoutError) as exc:
                return False, f"not connected: {exc}"
        disarm, answered = "DISARM acknowledged", True
        try:
            await self._ack(Cmd.DISARM, retries=1)  # idempotent, so a retry is safe
        except DriverError as exc:
            disarm, answered = f"DISARM failed: {exc}", isinstance(exc, DeviceRefused)
        try:
            # when DISARM went unanswered twice the gun is probably silent: one read is enough
            st = await self._read_status(retries=READ_ONLY_RETRIES if answered else 0)
        except DriverError as exc:
            return False, f"{disarm}; GET_STATUS failed: {exc}"
        name = state_name(st.state)
        if st.state in (State.ARMED, State.FIRING):
            return False, f"{disarm}; the gun is still {name}"
        return True, f"{disarm}; the gun is {name}"


__all__ = ["InjDriver", "InjParams", "state_name"]
