"""INJ-1 fuzzing: the frame parser and the simulator take any bytes without breaking.

The simulator runs once for the module on its own thread (``SimulatorThread``); the
examples talk to it over plain blocking sockets, so hypothesis drives ordinary
synchronous tests.
"""

from __future__ import annotations

import socket
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.inj_frames import EVENTS, REPLIES, Cmd, Frame, FrameError, FrameParser, crc16_modbus, encode
from simulators.harness import SimulatorThread
from tests.drivers.crc_reference import crc_reference

pytestmark = pytest.mark.timeout(60)

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])




frames = st.builds(
    Frame,
    seq=st.integers(0, 255),
    cmd=st.integers(0, 255),
    payload=st.binary(max_size=40),
)


# =========================================================================== parser


@settings(max_examples=300, deadline=None)
@given(chunks=st.lists(st.tuples(st.binary(max_size=80), st.floats(0, 0.08)), max_size=20))
def test_parser_takes_any_bytes(chunks):
    p = FrameParser()
    now = 0.0
    for data, gap in chunks:
        now += gap
        for item in p.feed(data, now=now):
            assert isinstance(item, (Frame, FrameError))
            if isinstance(item, Frame):
                assert 0 <= item.seq <= 255 and len(item.payload) <= 248
    assert p.pending <= 253  # never holds more than one frame's worth


@settings(max_examples=300, deadline=None)
@given(garbage=st.binary(max_size=300), frame=frames, split=st.integers(0, 400))
def test_frame_after_garbage_is_found(garbage, frame, split):
    wire = garbage + frame.encode()
    split = min(split, len(wire))
    p = FrameParser()
    got = p.feed(wire[:split], now=0.0) + p.feed(wire[split:], now=0.01)
    got += p.feed(b"", now=1.0)  # a false start in the noise waits out its 50 ms, then is rescanned
    assert frame in got


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=300))
def test_crc_table_matches_definition(data):
    assert crc16_modbus(data) == crc_reference(data)


# =========================================================================== simulator


@pytest.fixture(scope="module")
def sim_address():
    thread = SimulatorThread()
    try:
        handle = thread.start("inj", seed=3)
        host, _, port = handle.endpoint.removeprefix("socket://").rpartition(":")
        yield host, int(port)
    finally:
        thread.stop()


class Port:
    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address, timeout=2)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.parser = FrameParser()
        #: frames received other than the PING replies looked for
        self.seen: list[Frame] = []

    def close(self) -> None:
        self.sock.close()

    def frames(self, timeout: float) -> list[Frame]:
        """Whatever frames arrive within ``timeout``."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            return []
        assert data, "the simulator closed the connection"
        return [f for f in self.parser.feed(data) if isinstance(f, Frame)]

    def ping_until_answered(self, seq: int, deadline_s: float = 2.0) -> None:
        """The simulator still answers PING (after noise it may first wait out a false start)."""
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            self.sock.sendall(encode(seq, Cmd.PING))
            t_read = time.monotonic() + 0.06  # just over the 50 ms a false start is held
            while time.monotonic() < t_read:
                for f in self.frames(max(0.001, t_read - time.monotonic())):
                    if f.seq == seq and f.cmd == Cmd.INFO:
                        return
                    self.seen.append(f)
        raise AssertionError("the simulator stopped answering PING")


#: noise that looks like the protocol: raw bytes, false starts, cut and damaged frames
noise_chunks = st.one_of(
    st.binary(min_size=1, max_size=120),
    st.binary(max_size=20).map(lambda b: b"\x7e" + b),
    st.tuples(frames, st.integers(1, 60)).map(lambda t: t[0].encode()[: t[1]]),
    st.tuples(frames, st.integers(0, 10_000)).map(lambda t: flip_bit(t[0].encode(), t[1])),
)


def flip_bit(frame: bytes, n: int) -> bytes:
    out = bytearray(frame)
    n %= len(out) * 8
    out[n // 8] ^= 1 << (n % 8)
    return bytes(out)


@FUZZ
@given(noise=st.lists(noise_chunks, min_size=1, max_size=5))
def test_simulator_survives_random_bytes(sim_address, noise):
    port = Port(sim_address)
    try:
        for chunk in noise:
            port.sock.sendall(chunk)
        port.ping_until_answered(seq=0x42)
    finally:
        port.close()


@FUZZ
@given(seq=st.integers(1, 255), cmd=st.integers(0, 255), payload=st.binary(max_size=24))
def test_simulator_answers_every_good_frame_once(sim_address, seq, cmd, payload):
    port = Port(sim_address)
    try:
        port.sock.sendall(encode(seq, cmd, payload) + encode(seq ^ 0x80 or 1, Cmd.DISARM))
        replies: list[Frame] = []
        end = time.monotonic() + 1.0
        while time.monotonic() < end and len(replies) < 2:
            replies += [f for f in port.frames(0.1) if not (f.seq == 0 and f.cmd in EVENTS)]
        assert [f.seq for f in replies] == [seq, seq ^ 0x80 or 1]
        assert all(f.cmd in REPLIES for f in replies)
        assert replies[1].cmd == Cmd.ACK  # DISARM: always acknowledged
    finally:
        port.close()


@FUZZ
@given(frame=frames.filter(lambda f: f.seq != 0x42), bit=st.integers(0, 10_000))
def test_simulator_never_answers_a_damaged_frame(sim_address, frame, bit):
    port = Port(sim_address)
    try:
        port.sock.sendall(flip_bit(frame.encode(), bit))
        port.ping_until_answered(seq=0x42)
        assert [f for f in port.seen if not (f.seq == 0 and f.cmd in EVENTS)] == [], "a damaged frame was answered"
    finally:
        port.close()
