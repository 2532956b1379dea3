"""INJ-1: wire format, simulator and driver, tested against each other and on raw bytes.

The simulator is reached only through its device port (frames) and its control port
(JSON); a few tests use a scripted fake gun to produce what the simulator never sends
(late replies with an old SEQ, an ARM that is lost and did not arm).
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Callable, Iterable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as hst
from pydantic import ValidationError

from drivers.base import DeviceFault, DeviceRefused, DeviceTimeout, NotConnected, Preempted, ProtocolError
from drivers.crc import crc16_modbus_bytewise
from drivers.inj import InjDriver, InjParams
from drivers.inj_frames import (
    Ack,
    BadCrc,
    BadLength,
    Cap,
    Cmd,
    Frame,
    FrameParser,
    Info,
    Nak,
    Params,
    PartialTimeout,
    PayloadError,
    Shot,
    Status,
    crc16_modbus,
    decode_payload,
    encode,
)
from simulators.harness import run_simulator, spawn_simulator
from tests.drivers import waiting
from tests.drivers.crc_reference import crc_reference

pytestmark = pytest.mark.timeout(30)

SEED = 7
SERIAL = "INJ00007"




# =========================================================================== helpers


@pytest.fixture
async def sim():
    async with run_simulator("inj", seed=SEED) as h:
        yield h


@pytest.fixture
async def ctl(sim):
    async with sim.client() as c:
        yield c


@pytest.fixture
async def inj(sim):
    d = InjDriver(sim.endpoint)
    await d.connect()
    yield d
    await d.close()


#: this module waits at most 2 s for an event (and, EPG, for a state) unless told otherwise
next_event = functools.partial(waiting.next_event, timeout=2.0)
poll_state = waiting.wait_state


async def armed_with_cap(inj: InjDriver, params: InjParams, cap_ul: float) -> None:
    await inj.configure(params)
    await inj.set_cap(cap_ul)
    await inj.start()


class RawPort:
    """A bare TCP client on the device port, for exact wire bytes."""

    def __init__(self, endpoint: str) -> None:
        host, _, port = endpoint.removeprefix("socket://").rpartition(":")
        self.host, self.port = host, int(port)
        self.parser = FrameParser()
        self.frames: list[Frame] = []

    async def __aenter__(self) -> "RawPort":
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.writer.close()

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_bytes(self, n: int, timeout: float = 1.0) -> bytes:
        return await asyncio.wait_for(self.reader.readexactly(n), timeout)

    async def frame(self, pred: Callable[[Frame], bool] = lambda f: True, timeout: float = 1.0) -> Frame:
        """The next frame matching ``pred`` (earlier ones are kept in ``frames``)."""
        deadline = time.monotonic() + timeout
        while True:
            for i, f in enumerate(self.frames):
                if pred(f):
                    return self.frames.pop(i)
            left = deadline - time.monotonic()
            if left <= 0:
                raise asyncio.TimeoutError(f"no matching frame; have {self.frames}")
            try:
                data = await asyncio.wait_for(self.reader.read(4096), left)
            except asyncio.TimeoutError:
                continue
            assert data, "device closed the connection"
            self.frames += [x for x in self.parser.feed(data) if isinstance(x, Frame)]

    async def request(self, seq: int, cmd: int, payload: bytes = b"") -> Frame:
        await self.send(encode(seq, cmd, payload))
        return await self.frame(lambda f: f.seq == seq and f.cmd in (Cmd.ACK, Cmd.NAK, Cmd.INFO, Cmd.STATUS))


class FakeGun:
    """A scripted device on a TCP port: ``respond(frame)`` returns the bytes to send back."""

    def __init__(self, respond: Callable[[Frame], Iterable[bytes]]) -> None:
        self.respond = respond
        self.received: list[Frame] = []
        self.writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> "FakeGun":
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.endpoint = f"socket://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.drop_connections()
        self.server.close()
        await self.server.wait_closed()

    def drop_connections(self) -> None:
        for w in self.writers:
            w.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        parser = FrameParser()
        try:
            while data := await reader.read(4096):
                for f in parser.feed(data):
                    if isinstance(f, Frame):
                        self.received.append(f)
                        for out in self.respond(f):
                            writer.write(out)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


def status_frame(seq: int, state: int = 0, fault: int = 0, shots: int = 0) -> bytes:
    return encode(seq, Cmd.STATUS, Status(state, fault, shots, 0, 1000, 0, 15, 200).pack())


# =========================================================================== the frame format


def test_crc16_modbus_known_vectors():
    assert crc16_modbus(b"123456789") == 0x4B37
    assert crc16_modbus(b"") == 0xFFFF
    assert crc_reference(b"123456789") == 0x4B37
    data = bytes(range(256)) * 3
    assert crc16_modbus(data) == crc_reference(data)


@given(hst.binary(max_size=300), hst.sampled_from([bytes, bytearray, memoryview]))
def test_crc16_word_table_matches_the_definition(data: bytes, kind: type) -> None:
    # the hub's CRC takes two bytes per lookup: odd lengths, views and buffers included
    assert crc16_modbus(kind(data)) == crc_reference(data) == crc16_modbus_bytewise(data)
    assert crc16_modbus(memoryview(data)[1:]) == crc_reference(data[1:])


def test_encode_exact_bytes():
    # 0x7E | LEN | SEQ | CMD | CRC16 over LEN..CMD, little-endian
    assert encode(1, Cmd.PING) == bytes.fromhex("7e 02 01 01 10 50")
    assert encode(2, Cmd.GET_STATUS) == bytes.fromhex("7e 02 02 05 11 63")
    assert crc_reference(bytes.fromhex("02 01 01")) == 0x5010
    frame = encode(9, Cmd.SET_PARAMS, Params(200, 15, 1, 3).pack())
    assert frame[:4] == bytes.fromhex("7e 08 09 02")
    assert frame[4:10] == bytes.fromhex("c8 00 0f 00 01 03")
    assert frame[10:] == crc_reference(frame[1:10]).to_bytes(2, "little")


def test_encode_rejects_unframeable():
    with pytest.raises(ValueError):
        encode(256, 1)
    with pytest.raises(ValueError):
        encode(1, 1, bytes(249))
    assert len(encode(1, 1, bytes(248))) == 248 + 6  # LEN 250, the largest


def test_parser_splits_and_joins():
    a, b = encode(1, Cmd.PING), encode(2, Cmd.ACK, b"\x7e")  # 0x7E in a payload needs no stuffing
    p = FrameParser()
    got = []
    for i, byte in enumerate(a + b):
        got += p.feed(bytes([byte]), now=i * 0.001)
    assert got == [Frame(1, Cmd.PING), Frame(2, Cmd.ACK, b"\x7e")]


def test_parser_resyncs_after_bad_crc_and_bad_len():
    good = encode(5, Cmd.GET_STATUS)
    bad = bytearray(encode(4, Cmd.PING))
    bad[3] ^= 0x01
    out = FrameParser().feed(b"\x00\x11" + bytes(bad) + b"\x7e\x01" + b"\x7e\xff" + good, now=0.0)
    assert [type(x) for x in out] == [BadCrc, BadLength, BadLength, Frame]
    assert out[-1] == Frame(5, Cmd.GET_STATUS)


def test_parser_discards_partial_frame_after_50_ms():
    f = encode(1, Cmd.PING)
    p = FrameParser()
    assert p.feed(f[:3], now=10.0) == []
    assert p.feed(f[3:], now=10.049) == [Frame(1, Cmd.PING)]
    assert p.feed(f[:3], now=11.0) == []
    out = p.feed(f[3:] + f, now=11.051)  # the old half is stale: only the new whole frame counts
    assert isinstance(out[0], PartialTimeout)
    assert out[1:] == [Frame(1, Cmd.PING)]


def test_parser_finds_a_frame_hidden_behind_a_false_start():
    f = encode(3, Cmd.HEARTBEAT)
    p = FrameParser()
    assert p.feed(b"\x7e\xfa" + f, now=0.0) == []  # LEN 250 claims the bytes after it
    out = p.feed(b"", now=0.1)
    assert Frame(3, Cmd.HEARTBEAT) in out


def test_payload_structs():
    st = Status(1, 0, 7, 1234, 99_000, 55, 15, 200)
    assert len(st.pack()) == 20
    assert decode_payload(Frame(1, Cmd.STATUS, st.pack())) == st
    assert Shot.unpack(Shot(3, 201, 16, 5000).pack()) == Shot(3, 201, 16, 5000)
    assert Info.unpack(Info(1, 102, "AB").pack()) == Info(1, 102, "AB")
    assert decode_payload(Frame(1, Cmd.PING)) is None
    with pytest.raises(PayloadError):
        decode_payload(Frame(1, Cmd.STATUS, bytes(19)))
    with pytest.raises(PayloadError):
        decode_payload(Frame(1, Cmd.ARM, b"\x00"))
    with pytest.raises(PayloadError):
        decode_payload(Frame(1, 0x55))


# =========================================================================== the simulator's wire bytes


async def test_raw_ping_answers_exact_info_bytes(sim):
    async with RawPort(sim.endpoint) as port:
        await port.send(bytes.fromhex("7e 02 01 01 10 50"))
        reply = await port.read_bytes(18)
        info = b"\x01\x00" + (102).to_bytes(2, "little") + SERIAL.encode()
        body = bytes([14, 1, 0x81]) + info
        assert reply == b"\x7e" + body + crc_reference(body).to_bytes(2, "little")


async def test_raw_get_status_exact_bytes(sim):
    async with RawPort(sim.endpoint) as port:
        await port.send(bytes.fromhex("7e 02 02 05 11 63"))
        reply = await port.read_bytes(26)
        # idle, no fault, 0 shots, 0 uL, reservoir 10000.0 uL, 0 kPa, depth 1.5 mm, volume 20.0 uL
        assert reply == bytes.fromhex(
            "7e 16 02 85 00 00 00000000 00000000 a0860100 0000 0f00 c800 9cc5".replace(" ", "")
        )


async def test_raw_naks_and_seq_echo(sim, ctl):
    async with RawPort(sim.endpoint) as port:
        assert await port.request(0x33, 0x55) == Frame(0x33, Cmd.NAK, b"\x02")  # unknown command
        assert await port.request(0x34, Cmd.ACK, b"\x00") == Frame(0x34, Cmd.NAK, b"\x02")  # a reply code
        assert await port.request(0x35, Cmd.PING, b"\x00") == Frame(0x35, Cmd.NAK, b"\x01")  # payload too long
        assert await port.request(0x36, Cmd.SET_CAP, b"\x01\x02\x03") == Frame(0x36, Cmd.NAK, b"\x01")
        assert await port.request(0x37, Cmd.SET_PARAMS, bytes(7)) == Frame(0x37, Cmd.NAK, b"\x01")
        assert await port.request(0xFF, Cmd.HEARTBEAT) == Frame(0xFF, Cmd.ACK, b"\x00")
        assert await port.request(0x00, Cmd.HEARTBEAT) == Frame(0x00, Cmd.ACK, b"\x00")
    st = await ctl.state()
    assert st["requests"] == {"HEARTBEAT": 2}  # malformed and unknown frames do nothing


async def test_raw_bad_crc_is_never_answered(sim, ctl):
    async with RawPort(sim.endpoint) as port:
        bad = bytearray(encode(9, Cmd.ARM))
        bad[-1] ^= 0x80
        await port.send(bytes(bad) + encode(10, Cmd.PING))
        first = await port.frame()
        assert first.seq == 10 and first.cmd == Cmd.INFO
    st = await ctl.state()
    assert st["state"] == "idle" and "ARM" not in st["requests"]


async def test_raw_set_params_range_checks(sim, ctl):
    bad = [(9, 15, 0, 3), (2001, 15, 0, 3), (200, 4, 0, 3), (200, 61, 0, 3), (200, 15, 3, 3), (200, 15, 1, 0),
           (200, 15, 2, 11)]
    async with RawPort(sim.endpoint) as port:
        for i, p in enumerate(bad, start=1):
            assert await port.request(i, Cmd.SET_PARAMS, Params(*p).pack()) == Frame(i, Cmd.NAK, b"\x03"), p
        st = await ctl.state()
        assert (st["volume_set_ul"], st["depth_set_mm"], st["mode"], st["rate"]) == (20.0, 1.5, "single", 3)
        assert await port.request(20, Cmd.SET_PARAMS, Params(10, 5, 0, 1).pack()) == Frame(20, Cmd.ACK, b"\x00")
        assert await port.request(21, Cmd.SET_PARAMS, Params(2000, 60, 2, 10).pack()) == Frame(21, Cmd.ACK, b"\x00")
        st = await ctl.state()
        assert (st["volume_set_ul"], st["depth_set_mm"], st["mode"], st["rate"]) == (200.0, 6.0, "nappage", 10)
        # the rate is the burst rate: in single mode any value is taken, and the burst rate kept
        assert await port.request(22, Cmd.SET_PARAMS, Params(100, 20, 0, 0).pack()) == Frame(22, Cmd.ACK, b"\x00")
    st = await ctl.state()
    assert (st["volume_set_ul"], st["depth_set_mm"], st["mode"], st["rate"]) == (10.0, 2.0, "single", 10)


@pytest.mark.parametrize("false_start", ["7e 30", "7e 05", "00 00 7e fa"])
async def test_raw_a_frame_behind_a_false_start_is_answered_after_50_ms(sim, ctl, false_start):
    # noise holding a 0x7E and a possible LEN: the partial frame it starts is dropped 50 ms
    # after its last byte, without waiting for more bytes, and the rescan finds the request
    async with RawPort(sim.endpoint) as port:
        t0 = time.monotonic()
        await port.send(bytes.fromhex(false_start) + encode(0x21, Cmd.HEARTBEAT))
        reply = await port.frame(timeout=1.0)
        assert reply == Frame(0x21, Cmd.ACK, b"\x00")
        assert time.monotonic() - t0 >= 0.05  # not before the false start was held 50 ms (a lower bound)
    assert (await ctl.state())["requests"] == {"HEARTBEAT": 1}


async def test_raw_shot_event_carries_seq_0(sim, ctl):
    async with RawPort(sim.endpoint) as port:
        assert (await port.request(1, Cmd.SET_CAP, Cap(1000).pack())).cmd == Cmd.ACK
        assert await port.request(2, Cmd.ARM) == Frame(2, Cmd.ACK, b"\x01")
        await ctl.call("trigger")
        ev = await port.frame(lambda f: f.cmd == Cmd.SHOT)
        assert ev.seq == 0 and len(ev.payload) == 12
        shot = Shot.unpack(ev.payload)
        assert shot.shot_index == 1 and 196 <= shot.volume_x10 <= 204
        assert await port.request(3, Cmd.DISARM) == Frame(3, Cmd.ACK, b"\x00")


async def test_raw_watchdog_disarms_after_one_second_of_silence(sim, ctl):
    async with RawPort(sim.endpoint) as port:
        assert await port.request(1, Cmd.ARM) == Frame(1, Cmd.ACK, b"\x01")
        armed = await ctl.state()
        ev = await port.frame(lambda f: f.cmd == Cmd.FAULT, timeout=5.0)
        assert ev == Frame(0, Cmd.FAULT, b"\x05")
        st = await ctl.state()
        assert (st["state"], st["fault"], st["output_on"]) == ("fault", 5, False)
        # by the gun's own clock: one second after the last frame (ARM, stamped just after it)
        assert st["output_changed_at"] - armed["output_changed_at"] >= 1.0 - 0.001
        # latched: ARM refused until CLEAR_FAULT (the watchdog leaves no cause behind)
        assert await port.request(2, Cmd.ARM) == Frame(2, Cmd.NAK, b"\x04")
        assert await port.request(3, Cmd.CLEAR_FAULT) == Frame(3, Cmd.ACK, b"\x00")
        assert await port.request(4, Cmd.DISARM) == Frame(4, Cmd.ACK, b"\x00")


# =========================================================================== driver: commands


async def test_identify(inj, ctl):
    ident = await inj.identify()
    assert (ident.model, ident.serial, ident.firmware) == ("INJ-1", SERIAL, "102")
    assert (await ctl.state())["requests"] == {"PING": 1}


async def test_configure_and_status(inj, ctl):
    await inj.configure(InjParams(volume_ul=35.5, depth_mm=2.3, mode="nappage", rate_hz=7))
    st = await ctl.state()
    assert (st["volume_set_ul"], st["depth_set_mm"], st["mode"], st["rate"]) == (35.5, 2.3, "nappage", 7)
    s = await inj.status()
    assert (s.state, s.output_on, s.fault) == ("idle", False, None)
    assert s.readings == {"shots_total": 0, "volume_total_ul": 0.0, "reservoir_ul": 10000.0, "pressure_kpa": 0,
                          "depth_mm": 2.3, "volume_ul": 35.5}


@pytest.mark.parametrize("bad", [
    {"volume_ul": 0.9, "depth_mm": 1.5}, {"volume_ul": 200.1, "depth_mm": 1.5}, {"volume_ul": 20.05, "depth_mm": 1.5},
    {"volume_ul": 20, "depth_mm": 0.4}, {"volume_ul": 20, "depth_mm": 6.1}, {"volume_ul": 20, "depth_mm": 1.55},
    {"volume_ul": 20, "depth_mm": 1.5, "mode": "rapid"}, {"volume_ul": 20, "depth_mm": 1.5, "rate_hz": 0},
    {"volume_ul": 20, "depth_mm": 1.5, "rate_hz": 11}, {"volume_ul": float("nan"), "depth_mm": 1.5},
    {"depth_mm": 1.5},
])
def test_params_out_of_range_rejected_before_the_wire(bad):
    with pytest.raises(ValidationError):
        InjParams(**bad)


def test_params_edges_accepted():
    assert InjParams(volume_ul=1.0, depth_mm=0.5, rate_hz=1).volume_ul == 1.0
    p = InjParams(volume_ul=200.0, depth_mm=6.0, mode="burst", rate_hz=10)
    assert (p.volume_ul, p.depth_mm, p.mode, p.rate_hz) == (200.0, 6.0, "burst", 10)


async def test_configure_while_armed_refused(inj, ctl):
    await inj.start()
    with pytest.raises(DeviceRefused) as err:
        await inj.configure(InjParams(volume_ul=50, depth_mm=3.0))
    assert err.value.code == 4
    assert (await ctl.state())["volume_set_ul"] == 20.0
    await inj.stop()
    await inj.configure(InjParams(volume_ul=50, depth_mm=3.0))
    assert (await ctl.state())["volume_set_ul"] == 50.0


async def test_start_stop_heartbeat_clear(inj, ctl):
    await inj.start()
    assert inj.energised and (await ctl.state())["state"] == "armed"
    await inj.heartbeat()
    await inj.start()  # arming an armed gun is acknowledged
    await inj.clear_fault()  # nothing to clear: acknowledged
    await inj.stop()
    assert not inj.energised
    st = await ctl.state()
    assert (st["state"], st["output_on"]) == ("idle", False)
    assert st["requests"]["HEARTBEAT"] >= 1 and st["requests"]["ARM"] == 2


async def test_pull_when_not_armed_refused(inj, ctl):
    async with inj.subscribe() as q:
        assert (await ctl.call("trigger"))["trigger"] == "refused"
        ev = await next_event(q, "trigger_refused")
    assert ev.data == {"reason": 1, "text": "not armed"}
    assert (await ctl.state())["shots"] == 0


# =========================================================================== cap


async def test_power_up_cap_refuses_every_shot(inj, ctl):
    await inj.configure(InjParams(volume_ul=1.0, depth_mm=1.0))
    await inj.start()
    async with inj.subscribe() as q:
        await ctl.call("trigger")
        ev = await next_event(q, "trigger_refused")
    assert ev.data["reason"] == 2
    st = await ctl.state()
    assert (st["shots"], st["cap_ul"], st["state"]) == (0, 0.0, "armed")
    await inj.stop()


async def test_cap_counts_down_by_delivered_volume(inj, ctl):
    await armed_with_cap(inj, InjParams(volume_ul=20.0, depth_mm=1.5), 50.0)
    async with inj.subscribe() as q:
        await ctl.call("trigger")
        v1 = (await next_event(q, "shot")).data["volume_ul"]
        assert (await ctl.state())["cap_ul"] == pytest.approx(50.0 - v1)
        await poll_state(ctl, lambda s: s["state"] == "armed")
        await ctl.call("trigger")
        v2 = (await next_event(q, "shot")).data["volume_ul"]
        await poll_state(ctl, lambda s: s["state"] == "armed")
        await ctl.call("trigger")  # 50 - v1 - v2 < 20: refused
        ev = await next_event(q, "trigger_refused")
    assert ev.data["reason"] == 2
    st = await ctl.state()
    assert st["shots"] == 2
    assert st["cap_ul"] == pytest.approx(50.0 - v1 - v2)
    await inj.stop()


async def test_cap_never_below_zero_and_can_be_set_again(inj, ctl):
    await armed_with_cap(inj, InjParams(volume_ul=20.0, depth_mm=1.5), 20.0)
    async with inj.subscribe() as q:
        for _ in range(6):  # until one shot delivers more than 20.0 uL and would overdraw the cap
            await ctl.call("trigger")
            v = (await next_event(q, "shot")).data["volume_ul"]
            st = await poll_state(ctl, lambda s: s["state"] == "armed")
            assert st["cap_ul"] == pytest.approx(max(0.0, 20.0 - v))
            if v > 20.0:
                break
            await inj.set_cap(20.0)
        else:
            pytest.fail("no shot above the set volume in six")
    assert st["cap_ul"] == 0.0
    await inj.set_cap(19.99)  # rounded down, never up
    assert (await ctl.state())["cap_ul"] == 19.9
    await inj.stop()


async def test_set_cap_rejects_nonsense(inj):
    for bad in (-0.1, float("inf"), float("nan"), True):
        with pytest.raises(ValueError):
            await inj.set_cap(bad)


# =========================================================================== shots


async def test_shots_scatter_and_totals_match(inj, ctl):
    await armed_with_cap(inj, InjParams(volume_ul=20.0, depth_mm=2.0), 1000.0)
    n = 12
    async with inj.subscribe() as q:
        await ctl.call("auto_trigger", rate_hz=10)
        shots = [await next_event(q, "shot") for _ in range(n)]
        await ctl.call("auto_trigger", rate_hz=0)
        st = await poll_state(ctl, lambda s: s["state"] == "armed")
        while len(shots) < st["shots"]:  # a shot in flight when the technician stopped
            shots.append(await next_event(q, "shot"))
    vols = [s.data["volume_ul"] for s in shots]
    assert [s.data["index"] for s in shots] == list(range(1, len(shots) + 1))
    assert all(19.6 <= v <= 20.4 for v in vols)
    assert len(set(vols)) > 1 and any(v != 20.0 for v in vols)  # the host must count what was delivered
    assert all(1.8 <= s.data["depth_mm"] <= 2.2 for s in shots)
    assert st["auto_trigger_hz"] == 0.0
    status = await inj.status()
    assert status.readings["shots_total"] == st["shots"] == len(shots)
    assert status.readings["volume_total_ul"] == pytest.approx(sum(vols)) == st["volume_ul"]
    assert status.readings["reservoir_ul"] == pytest.approx(10000.0 - sum(vols))
    assert st["cap_ul"] == pytest.approx(1000.0 - sum(vols))
    await inj.stop()


async def test_pull_during_a_shot_is_ignored(inj, ctl):
    await armed_with_cap(inj, InjParams(volume_ul=200.0, depth_mm=1.5), 1000.0)
    assert (await ctl.call("trigger"))["trigger"] == "shot"
    assert (await ctl.call("trigger"))["trigger"] == "ignored"
    st = await poll_state(ctl, lambda s: s["state"] == "armed")
    assert st["shots"] == 1
    await inj.stop()


async def test_pressure_rises_with_viscosity_and_relaxes(inj, ctl):
    await armed_with_cap(inj, InjParams(volume_ul=20.0, depth_mm=1.5), 1000.0)
    peaks = []
    for visc in (1.0, 10.0):
        await ctl.set("viscosity", visc)
        await ctl.call("trigger")
        st = await poll_state(ctl, lambda s: s["state"] == "firing" or s["shots"] > len(peaks))
        peaks.append(st["pressure_kpa"])
        await poll_state(ctl, lambda s: s["pressure_kpa"] < 1.0)  # relaxes between shots
    assert 0 < peaks[0] < peaks[1] < 400


async def test_pressure_builds_with_shot_rate_but_stays_under_the_limit(inj, ctl):
    await ctl.set("viscosity", 20.0)  # the thickest product, at the fastest rate
    await armed_with_cap(inj, InjParams(volume_ul=20.0, depth_mm=1.5, mode="burst", rate_hz=10), 1000.0)
    await ctl.call("trigger", hold_s=1.0)
    single = (await poll_state(ctl, lambda s: s["state"] == "firing"))["pressure_kpa"]
    highest = single
    st = await ctl.state()
    deadline = time.monotonic() + 3.0
    while st["shots"] < 10 or st["state"] == "firing":
        assert time.monotonic() < deadline, st
        highest = max(highest, st["pressure_kpa"])
        st = await ctl.state()
    assert (st["state"], st["fault"], st["shots"]) == ("armed", 0, 10)
    assert 1.5 * single < highest < 400
    await inj.stop()


async def test_burst_mode_fires_at_rate_while_held(inj, ctl):
    await armed_with_cap(inj, InjParams(volume_ul=10.0, depth_mm=1.0, mode="burst", rate_hz=10), 1000.0)
    async with inj.subscribe() as q:
        await ctl.call("trigger", hold_s=0.5)
        shots = [await next_event(q, "shot") for _ in range(5)]
        st = await poll_state(ctl, lambda s: s["state"] == "armed")
    assert st["shots"] == 5
    t = [s.data["t_ms"] for s in shots]
    gaps = [b - a for a, b in zip(t, t[1:])]
    assert all(80 <= g <= 150 for g in gaps), gaps
    await inj.stop()


async def test_single_mode_ignores_hold_and_nappage_uses_rate(inj, ctl):
    await armed_with_cap(inj, InjParams(volume_ul=10.0, depth_mm=1.0), 1000.0)
    await ctl.call("trigger", hold_s=1.0)
    await poll_state(ctl, lambda s: s["state"] == "armed" and s["shots"] == 1)
    await inj.stop()
    await inj.configure(InjParams(volume_ul=10.0, depth_mm=3.0, mode="nappage", rate_hz=5))
    await inj.start()
    async with inj.subscribe() as q:
        await ctl.call("trigger", hold_s=0.4)
        await next_event(q, "shot")
        await next_event(q, "shot")
    await poll_state(ctl, lambda s: s["state"] == "armed" and s["shots"] == 3)
    await inj.stop()


# =========================================================================== watchdog


async def test_driver_heartbeat_holds_the_gun_armed(inj, ctl):
    await inj.start()
    # armed throughout 8 heartbeats, by the gun's own count: 8 x 0.3 s is more than twice
    # its 1 s watchdog, which would have latched fault 5 without them
    while True:
        st = await ctl.state()
        assert (st["state"], st["fault"]) == ("armed", 0)
        if st["requests"].get("HEARTBEAT", 0) >= 8:
            break
        await asyncio.sleep(0.05)  # poll interval
    await inj.stop()


# =========================================================================== faults


async def test_occlusion_while_armed(inj, ctl):
    await armed_with_cap(inj, InjParams(volume_ul=20.0, depth_mm=1.5), 100.0)
    async with inj.subscribe() as q:
        await ctl.inject("occlusion")
        ev = await next_event(q, "fault")
    assert ev.data["code"] == 6 and "occlusion" in ev.data["text"]
    assert not inj.energised
    s = await inj.status()
    assert (s.state, s.output_on, s.fault) == ("fault", False, 6)
    assert s.readings["pressure_kpa"] > 400
    with pytest.raises(DeviceRefused) as err:
        await inj.clear_fault()  # the cause is still there
    assert err.value.code == 4
    with pytest.raises(DeviceFault) as refused:
        await inj.start()  # refused (NAK 4) because of the fault: the fault is the answer
    assert refused.value.code == 6
    await ctl.clear("occlusion")
    await inj.clear_fault()
    s = await inj.status()
    assert (s.state, s.fault) == ("idle", None)
    await poll_state(ctl, lambda st: st["pressure_kpa"] < 400)


async def test_an_arm_refused_by_a_fault_the_driver_never_heard_of_raises_that_fault(sim, ctl):
    # the gun latched occlusion before this connection: ARM's refusal (NAK 4) is read
    # with STATUS, and the fault it shows is raised, as its event would have told
    first = InjDriver(sim.endpoint)
    await first.connect()
    try:
        await armed_with_cap(first, InjParams(volume_ul=20.0, depth_mm=1.5), 100.0)
        async with first.subscribe() as q:
            await ctl.inject("occlusion")
            await next_event(q, "fault")
    finally:
        await first.close()
    later = InjDriver(sim.endpoint)
    await later.connect()
    try:
        with pytest.raises(DeviceFault) as err:
            await later.start()
        assert err.value.code == 6 and "occlusion" in err.value.text
        with pytest.raises(DeviceRefused) as still:
            await later.clear_fault()  # the cause is still there: a refusal, not a fault
        assert still.value.code == 4
    finally:
        await later.close()


async def test_occlusion_while_idle_faults_at_the_next_shot(inj, ctl):
    await ctl.inject("occlusion", count=-1)
    await armed_with_cap(inj, InjParams(volume_ul=20.0, depth_mm=1.5), 100.0)
    assert (await ctl.state())["state"] == "armed"
    async with inj.subscribe() as q:
        await ctl.call("trigger")
        ev = await next_event(q, "fault")
    assert ev.data["code"] == 6
    st = await ctl.state()
    assert (st["state"], st["fault"], st["shots"], st["output_on"]) == ("fault", 6, 0, False)
    assert st["pressure_kpa"] > 400


async def test_empty_injected_while_armed(inj, ctl):
    await inj.start()
    async with inj.subscribe() as q:
        await ctl.inject("empty")
        ev = await next_event(q, "fault")
    assert ev.data == {"code": 7, "text": "reservoir empty"}
    s = await inj.status()
    assert (s.state, s.fault, s.output_on) == ("fault", 7, False)
    with pytest.raises(DeviceRefused):
        await inj.clear_fault()
    await ctl.clear("empty")
    await inj.clear_fault()
    await inj.start()
    await inj.stop()


async def test_reservoir_running_low_and_empty(inj, ctl):
    await armed_with_cap(inj, InjParams(volume_ul=20.0, depth_mm=1.5), 1000.0)
    async with inj.subscribe() as q:
        await ctl.set("reservoir_ul", 5.0)  # less than a shot: refused, still armed
        await ctl.call("trigger")
        ev = await next_event(q, "trigger_refused")
        assert ev.data["reason"] == 3
        assert (await ctl.state())["state"] == "armed"
        await ctl.set("reservoir_ul", 0)
        ev = await next_event(q, "fault")
    assert ev.data["code"] == 7
    assert (await inj.status()).fault == 7
    await ctl.set("reservoir_ul", 100)
    await inj.clear_fault()
    await ctl.set("reservoir_ul", 0)
    with pytest.raises(DeviceFault) as err:
        await inj.start()  # an empty gun does not arm (NAK 4): the cause is the empty reservoir
    assert err.value.code == 7 and isinstance(err.value.__cause__, DeviceRefused) and err.value.__cause__.code == 4
    assert (await ctl.state())["state"] == "idle"


async def test_last_shot_empties_the_reservoir(inj, ctl):
    # 1.0 uL shots: a 2 % scatter stays under the 0.1 uL resolution, so every shot is exactly 1.0
    await armed_with_cap(inj, InjParams(volume_ul=1.0, depth_mm=1.5), 100.0)
    await ctl.set("reservoir_ul", 2.0)
    async with inj.subscribe() as q:
        await ctl.call("trigger")
        assert (await next_event(q, "shot")).data["volume_ul"] == 1.0
        st = await poll_state(ctl, lambda s: s["state"] == "armed")
        assert st["reservoir_ul"] == 1.0
        await ctl.call("trigger")
        assert (await next_event(q, "shot")).data["volume_ul"] == 1.0
        assert (await next_event(q, "fault")).data["code"] == 7
    s = await inj.status()
    assert (s.state, s.fault, s.readings["reservoir_ul"], s.readings["shots_total"]) == ("fault", 7, 0.0, 2)


async def test_cartridge_missing(inj, ctl):
    await inj.start()
    async with inj.subscribe() as q:
        await ctl.inject("cartridge_missing")
        ev = await next_event(q, "fault")
    assert ev.data["code"] == 8
    s = await inj.status()
    assert (s.state, s.fault, s.fault_text) == ("fault", 8, "needle cartridge missing")
    with pytest.raises(DeviceRefused):
        await inj.clear_fault()
    await ctl.clear("cartridge_missing")
    await inj.clear_fault()
    await ctl.inject("cartridge_missing")
    with pytest.raises(DeviceFault) as err:
        await inj.start()  # idle with no cartridge: ARM refused (NAK 4), nothing latched; the cause named
    assert err.value.code == 8 and isinstance(err.value.__cause__, DeviceRefused) and err.value.__cause__.code == 4
    assert (await ctl.state())["state"] == "idle"


async def test_corrupt_reply_recovered_by_retry(inj, ctl):
    await ctl.inject("corrupt")
    s = await inj.status()
    assert s.state == "idle"
    assert inj.bad_frames + inj.noise_bytes > 0  # the damaged reply was seen and dropped
    assert (await ctl.state())["requests"]["GET_STATUS"] == 2


async def test_corrupt_event_is_dropped_not_misread(inj, ctl):
    await armed_with_cap(inj, InjParams(volume_ul=20.0, depth_mm=1.5), 1000.0)
    async with inj.subscribe() as q:
        await ctl.inject("corrupt")
        await ctl.call("trigger")  # its SHOT event has a flipped bit
        await poll_state(ctl, lambda s: s["shots"] == 1 and s["state"] == "armed")
        await inj.heartbeat()  # the next frame is clean
        kinds = []
        while not q.empty():
            kinds.append(q.get_nowait().kind)
    assert "shot" not in kinds
    assert inj.bad_frames + inj.noise_bytes > 0
    assert (await inj.status()).readings["shots_total"] == 1
    await inj.stop()


async def test_drop_reply_on_read_is_retried(inj, ctl):
    await ctl.inject("drop_reply")
    assert (await inj.identify()).serial == SERIAL
    assert (await ctl.state())["requests"]["PING"] == 2


async def test_recovery_after_lost_and_corrupt_write_replies(inj, ctl):
    for fault in ("drop_reply", "corrupt"):
        await ctl.inject(fault)
        await inj.set_cap(10.0)  # the gun is idle: STATUS read, then sent once more (test_lost_replies_inj)
        assert (await ctl.state())["cap_ul"] == 10.0
        await inj.set_cap(12.5)
        assert (await ctl.state())["cap_ul"] == 12.5
        assert (await inj.identify()).serial == SERIAL
    assert (await ctl.state())["requests"]["SET_CAP"] == 6


async def test_stall_times_out_and_watchdog_still_runs(inj, ctl):
    await inj.start()
    await ctl.inject("stall")
    t0 = time.perf_counter()
    with pytest.raises(DeviceTimeout):
        await inj.status()
    assert time.perf_counter() - t0 >= 0.6 - 0.001  # three attempts of 200 ms, never fewer (a lower bound)
    st = await poll_state(ctl, lambda s: s["state"] == "fault", timeout=2.0)
    assert (st["fault"], st["output_on"]) == (5, False)
    await ctl.clear("stall")
    s = await inj.status()
    assert (s.state, s.fault) == ("fault", 5)
    await inj.clear_fault()
    assert (await inj.status()).state == "idle"


# =========================================================================== ARM without a reply


async def test_arm_reply_lost_reads_status_and_succeeds(inj, ctl):
    await ctl.inject("drop_reply")
    await inj.start()
    assert inj.energised
    st = await ctl.state()
    assert st["state"] == "armed"
    assert st["requests"]["ARM"] == 1 and st["requests"]["GET_STATUS"] == 1
    await inj.stop()


async def test_arm_unanswered_on_a_stalled_gun_raises(inj, ctl):
    await ctl.inject("stall")
    with pytest.raises(DeviceTimeout):
        await inj.start()
    assert not inj.energised
    await ctl.clear("stall")
    assert "ARM" not in (await ctl.state())["requests"]


async def test_arm_lost_and_not_armed_is_not_resent():
    def respond(f: Frame) -> list[bytes]:
        if f.cmd == Cmd.GET_STATUS:
            return [status_frame(f.seq, state=0)]
        return []  # the ARM is lost on the way

    async with FakeGun(respond) as gun:
        d = InjDriver(gun.endpoint)
        await d.connect()
        with pytest.raises(DeviceTimeout, match="idle"):
            await d.start()
        await d.close()
    assert [f.cmd for f in gun.received] == [Cmd.ARM, Cmd.GET_STATUS]
    assert not d.energised


# =========================================================================== SEQ handling


async def test_stale_and_foreign_seq_replies_are_ignored():
    def respond(f: Frame) -> list[bytes]:
        if f.cmd == Cmd.PING:
            return [encode((f.seq - 1) % 256, Cmd.INFO, Info(1, 1, "STALE000").pack()),  # an old request's reply
                    encode(0, Cmd.SHOT, Shot(1, 200, 15, 10).pack()),  # an event in between
                    encode(f.seq, Cmd.INFO, Info(1, 1, "RIGHT000").pack())]
        return []

    async with FakeGun(respond) as gun:
        d = InjDriver(gun.endpoint)
        await d.connect()
        async with d.subscribe() as q:
            assert (await d.identify()).serial == "RIGHT000"
            assert (await next_event(q, "shot")).data == {"index": 1, "volume_ul": 20.0, "depth_mm": 1.5, "t_ms": 10}
        assert d.stale_replies == 1
        await d.close()


async def test_late_reply_after_timeout_is_ignored_on_retry():
    sent: list[int] = []

    def respond(f: Frame) -> list[bytes]:
        sent.append(f.seq)
        if len(sent) == 1:
            return []  # first GET_STATUS: reply comes too late, just before the retry's
        return [status_frame(sent[0], state=1, shots=99), status_frame(f.seq, state=0, shots=3)]

    async with FakeGun(respond) as gun:
        d = InjDriver(gun.endpoint)
        await d.connect()
        s = await d.status()
        await d.close()
    assert (s.state, s.readings["shots_total"]) == ("idle", 3)
    assert sent[1] != sent[0] and d.stale_replies == 1


async def test_seq_wraps_1_to_255_and_skips_0():
    def respond(f: Frame) -> list[bytes]:
        return [encode(f.seq, Cmd.ACK, Ack(0).pack())]

    async with FakeGun(respond) as gun:
        d = InjDriver(gun.endpoint)
        await d.connect()
        for _ in range(260):
            await d.heartbeat()
        await d.close()
    seqs = [f.seq for f in gun.received]
    assert seqs[:3] == [1, 2, 3]
    assert seqs[254:257] == [255, 1, 2]
    assert 0 not in seqs


async def test_nak_and_wrong_reply_type():
    def respond(f: Frame) -> list[bytes]:
        if f.cmd == Cmd.SET_CAP:
            return [encode(f.seq, Cmd.NAK, Nak(3).pack())]
        return [encode(f.seq, Cmd.ACK, Ack(0).pack())]  # an ACK to PING is not INFO

    async with FakeGun(respond) as gun:
        d = InjDriver(gun.endpoint)
        await d.connect()
        with pytest.raises(DeviceRefused) as err:
            await d.set_cap(5)
        assert err.value.code == 3
        with pytest.raises(ProtocolError):
            await d.identify()
        await d.close()
    assert [f.cmd for f in gun.received].count(Cmd.PING) == 3  # read-only: retried twice


async def test_short_reply_is_a_protocol_error_and_reads_retry():
    calls: list[int] = []

    def respond(f: Frame) -> list[bytes]:
        calls.append(f.cmd)
        if f.cmd == Cmd.GET_STATUS and calls.count(Cmd.GET_STATUS) == 1:
            return [encode(f.seq, Cmd.STATUS, bytes(19))]  # one byte short
        if f.cmd == Cmd.GET_STATUS:
            return [status_frame(f.seq, shots=4)]
        return [encode(f.seq, Cmd.ACK, b"")]  # an ACK without its state byte

    async with FakeGun(respond) as gun:
        d = InjDriver(gun.endpoint)
        await d.connect()
        assert (await d.status()).readings["shots_total"] == 4
        with pytest.raises(ProtocolError):
            await d.clear_fault()  # not read-only: not retried
        await d.close()
    assert calls == [Cmd.GET_STATUS, Cmd.GET_STATUS, Cmd.CLEAR_FAULT]


# =========================================================================== safe state


async def test_safe_state_from_every_state(inj, ctl):
    # idle
    t0 = time.monotonic()
    r = await inj.safe_state()
    assert r.confirmed and 0 < r.ms <= (time.monotonic() - t0) * 1000
    # armed
    await armed_with_cap(inj, InjParams(volume_ul=20.0, depth_mm=1.5, mode="burst", rate_hz=10), 1000.0)
    r = await inj.safe_state()
    assert r.confirmed and not inj.energised
    assert (await ctl.state())["output_on"] is False
    # firing, in a held burst: the burst stops too (the cap sent anew: an ARM after a safe
    # state needs its cap, decision 0015)
    await inj.set_cap(1000.0)
    await inj.start()
    await ctl.call("trigger", hold_s=3.0)
    await poll_state(ctl, lambda s: s["state"] == "firing")
    r = await inj.safe_state()
    assert r.confirmed, r.detail
    st = await ctl.state()
    assert st["state"] == "idle"
    shots = st["shots"]
    t_end = time.monotonic() + 0.3
    while time.monotonic() < t_end:
        assert (await ctl.state())["shots"] == shots
        await asyncio.sleep(0.03)
    # fault
    await inj.set_cap(1000.0)
    await inj.start()
    await ctl.inject("cartridge_missing")
    await poll_state(ctl, lambda s: s["state"] == "fault")
    r = await inj.safe_state()
    assert r.confirmed and "fault" in r.detail
    # idempotent
    r2 = await inj.safe_state()
    assert r2.confirmed


async def test_no_arm_after_a_safe_state_that_came_since_its_cap(inj, ctl):
    """Decision 0015 for INJ-1: a step that outlived a stop must not arm the gun after the
    stop's safe state (the technician's trigger would fire it)."""
    await inj.configure(InjParams(volume_ul=20.0, depth_mm=1.5, mode="single", rate_hz=1))
    await inj.set_cap(100.0)
    assert (await inj.safe_state()).confirmed
    arms = (await ctl.state())["requests"].get("ARM", 0)
    with pytest.raises(Preempted):
        await inj.start()
    st = await ctl.state()
    assert st["requests"].get("ARM", 0) == arms and st["state"] == "idle" and not inj.energised
    # a cap sent after the safe state is a start of its own: it arms
    await inj.set_cap(100.0)
    await inj.start()
    assert (await ctl.state())["state"] == "armed" and inj.energised
    assert (await inj.safe_state()).confirmed


async def test_safe_state_before_connect(sim, ctl):
    d = InjDriver(sim.endpoint)
    r = await d.safe_state()
    assert r.confirmed, r.detail
    assert (await ctl.state())["requests"]["DISARM"] == 1
    await d.close()


async def test_safe_state_against_stalled_gun(inj, ctl):
    await inj.start()
    await ctl.inject("stall")
    t0 = time.monotonic()
    r = await inj.safe_state()
    assert not r.confirmed
    assert 0 < r.ms <= (time.monotonic() - t0) * 1000
    assert "DISARM" in r.detail
    assert not inj.energised
    st = await poll_state(ctl, lambda s: s["state"] == "fault", timeout=2.0)  # its own watchdog
    assert st["fault"] == 5
    await ctl.clear("stall")


async def test_connection_lost_is_reported():
    async with FakeGun(lambda f: [encode(f.seq, Cmd.ACK, Ack(1).pack())]) as gun:
        d = InjDriver(gun.endpoint)
        await d.connect()
        await d.start()
        assert d.energised
        async with d.subscribe() as q:
            gun.drop_connections()
            ev = await next_event(q, "connection_lost")
        assert not d.connected and not d.energised
        with pytest.raises(NotConnected):
            await d.status()
    r = await d.safe_state()  # the port is gone: unconfirmed, and no exception
    assert not r.confirmed and "not connected" in r.detail
    await d.close()


# =========================================================================== control channel


async def test_bad_control_requests_change_nothing(sim, ctl):
    await ctl.call("auto_trigger", rate_hz=0)
    before = await ctl.state()
    bad: list[Any] = [
        b"not json", b"[1, 2]", {"op": 5}, {"op": "nope"}, {"fault": "stall"},
        {"op": "inject", "fault": "bogus"}, {"op": "inject", "fault": "stall", "count": 0},
        {"op": "inject", "fault": "stall", "count": "1"}, {"op": "inject", "fault": "corrupt", "count": -2},
        {"op": "clear", "fault": "bogus"},
        {"op": "set", "name": "reservoir_ul", "value": 10000.5}, {"op": "set", "name": "reservoir_ul", "value": -1},
        {"op": "set", "name": "viscosity", "value": "thick"}, {"op": "set", "name": "viscosity", "value": 0.1},
        {"op": "set", "name": "viscosity", "value": True}, {"op": "set", "name": "pressure_kpa", "value": 1},
        {"op": "trigger", "hold_s": -1}, {"op": "trigger", "hold_s": "long"}, {"op": "trigger", "hold_s": True},
        {"op": "trigger", "hold_s": 61}, {"op": "auto_trigger"}, {"op": "auto_trigger", "rate_hz": -1},
        {"op": "auto_trigger", "rate_hz": "fast"}, {"op": "auto_trigger", "rate_hz": 1000},
    ]
    for req in bad:
        reply = await ctl.request(req if isinstance(req, bytes) else json.dumps(req).encode())
        assert reply["ok"] is False and reply["error"], req
    after = await ctl.state()
    assert after == before


async def test_control_inputs(sim, ctl):
    assert (await ctl.set("viscosity", 5))["viscosity"] == 5
    await ctl.set("reservoir_ul", 1234.5)
    st = await ctl.state()
    assert (st["viscosity"], st["reservoir_ul"]) == (5.0, 1234.5)
    assert st["device"] == "inj" and st["injected"] == {}
    await ctl.inject("drop_reply", count=3)
    assert (await ctl.state())["injected"] == {"drop_reply": 3}
    await ctl.clear()
    assert (await ctl.state())["injected"] == {}


# =========================================================================== transports


async def test_driver_over_pty():
    async with run_simulator("inj", pty=True, seed=SEED) as h:
        assert h.endpoint.startswith("/dev/")
        d = InjDriver(h.endpoint)
        await d.connect()
        assert (await d.identify()).serial == SERIAL
        await d.configure(InjParams(volume_ul=15.0, depth_mm=1.2))
        await d.start()
        assert (await d.status()).state == "armed"
        assert (await d.safe_state()).confirmed
        await d.close()


async def test_spawned_simulator_announces_and_serves():
    with spawn_simulator("inj", "--port", "0", "--seed", str(SEED)) as (proc, lines):
        line = lines[0]
        assert line["device"] == "inj"
        assert line["endpoint"].startswith("socket://127.0.0.1:")
        assert line["control"].startswith("127.0.0.1:")
        d = InjDriver(line["endpoint"])
        await d.connect()
        assert (await d.identify()).serial == SERIAL
        await d.close()
        assert proc.poll() is None


@pytest.mark.parametrize(("depth_x10", "lowest"), [(60, 59), (5, 5)])
async def test_shot_depth_reached_is_never_deeper_than_set_nor_below_half_a_mm(sim, ctl, depth_x10: int,
                                                                               lowest: int) -> None:
    # the depth stop limits the needle: up to 0.1 mm short of the set depth, never deeper,
    # never below the ICD's 0.5 mm
    async with RawPort(sim.endpoint) as port:
        assert (await port.request(1, Cmd.SET_PARAMS, Params(100, depth_x10, 0, 3).pack())).cmd == Cmd.ACK
        assert (await port.request(2, Cmd.SET_CAP, Cap(100_000).pack())).cmd == Cmd.ACK
        assert await port.request(3, Cmd.ARM) == Frame(3, Cmd.ACK, b"\x01")
        depths = []
        for i in range(30):
            await ctl.call("trigger")
            shot = Shot.unpack((await port.frame(lambda f: f.cmd == Cmd.SHOT)).payload)
            depths.append(shot.depth_x10)
            assert (await port.request(10 + i, Cmd.HEARTBEAT)).cmd == Cmd.ACK  # the gun's watchdog
        assert lowest <= min(depths) and max(depths) == depth_x10, depths
        assert await port.request(4, Cmd.DISARM) == Frame(4, Cmd.ACK, b"\x00")
