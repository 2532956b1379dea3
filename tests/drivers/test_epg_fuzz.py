"""EPG-1 fuzzing: the host's line parser and the simulator take any bytes without breaking.

The parser may only ever raise the driver's typed ProtocolError; the simulator must
survive anything a host sends and still answer ``*IDN?`` afterwards.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.base import ProtocolError
from drivers.epg import EpgDriver
from drivers.line_protocol import (
    MAX_LINE,
    DoneEvent,
    FaultEvent,
    LineSplitter,
    PulseEvent,
    decode_line,
    parse_err,
    parse_error_entry,
    parse_number,
)
from simulators.harness import SimHandle, SimulatorThread

pytestmark = pytest.mark.timeout(60)

IDN = b"DeviceHub-Sim,EPG-1,SIM00001,1.0.0"

HEADERS = ["*IDN?", "*RST", "SYST:ERR?", "SOUR:VOLT", "SOUR:VOLT?", "PULS:WIDT", "PULS:WIDT?", "PULS:PER",
           "PULS:PER?", "PULS:COUN", "PULS:COUN?", "PULS:POL", "PULS:POL?", "CURR:LIM", "CURR:LIM?",
           "MEAS:IMP?", "OUTP:ARM", "OUTP:TRIG", "OUTP:STOP", "OUTP:STAT?", "TRAIN:REP?", "SYST:HEART",
           "SYST:EVEN:PULS", "SYST:FAULT:CLR", "!PULSE", "!DONE", "!FAULT", "ERR"]
ARGS = st.one_of(
    st.just(""),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda f: " " + repr(f)),
    st.integers(-10**30, 10**30).map(lambda i: f" {i}"),
    st.sampled_from([" MONO", " bip", " ON", " off", ' 1,"x"', " -310,\"Watchdog\"", " 1,2,3", " 1,2,3,4", " ,,", " \"", " e5"]),
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x7F, exclude_characters="\n"), max_size=40).map(lambda t: " " + t),
)
#: lines that look like the protocol, so the fuzzer reaches past the first check
PROTOCOLISH = st.builds(lambda h, a, case: (h.lower() if case else h) + a, st.sampled_from(HEADERS), ARGS, st.booleans())


def _chunks_of(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in points:
        out.append(data[last:p])
        last = p
    out.append(data[last:])
    return out


# ============================================================================ the host's parser


def _check_line(raw: bytes) -> None:
    try:
        msg = decode_line(raw)
    except ProtocolError:
        return
    assert len(raw) <= MAX_LINE
    if isinstance(msg, str):
        assert msg == raw.decode("ascii")
        for parse in (parse_err, parse_error_entry, parse_number):
            try:
                parse(msg)
            except ProtocolError:
                pass
    else:
        assert isinstance(msg, (PulseEvent, DoneEvent, FaultEvent))


@settings(max_examples=400, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=12))
def test_parser_takes_any_bytes(chunks: list[bytes]) -> None:
    splitter = LineSplitter()
    for chunk in chunks:
        for raw in splitter.feed(chunk):
            assert b"\n" not in raw
            _check_line(raw)
        assert splitter.buffered <= MAX_LINE + 1  # memory stays bounded whatever arrives


@settings(max_examples=400, deadline=None)
@given(st.lists(PROTOCOLISH, min_size=1, max_size=10), st.lists(st.integers(0, 10_000), max_size=6),
       st.sampled_from([b"\n", b"\r\n"]))
def test_parser_takes_protocol_like_lines(lines: list[str], cuts: list[int], eol: bytes) -> None:
    data = eol.join(line.encode("ascii", "replace") for line in lines) + eol
    splitter = LineSplitter()
    out: list[bytes] = []
    for chunk in _chunks_of(data, cuts):
        out += splitter.feed(chunk)
    assert len(out) == len(lines)  # however the bytes are cut, lines come out whole
    for raw in out:
        _check_line(raw)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(st.binary(max_size=200), PROTOCOLISH.map(lambda s: s.encode("ascii", "replace") + b"\n")),
                max_size=12))
def test_driver_data_handler_never_raises(chunks: list[bytes]) -> None:
    driver = EpgDriver("socket://127.0.0.1:9")  # never connected: only its parser and routing run
    for chunk in chunks:
        driver._on_data(chunk)
    while not driver._replies.empty():  # everything routed as a reply is a reply text or a typed error
        item = driver._replies.get_nowait()
        assert isinstance(item, (str, ProtocolError))


# ============================================================================ the simulator


@pytest.fixture(scope="module")
def served() -> Iterator[SimHandle]:
    thread = SimulatorThread()
    try:
        yield thread.start("epg", seed=7)
    finally:
        thread.stop()


def _ask_idn_after(handle: SimHandle, payload: bytes) -> None:
    host, _, port = handle.endpoint.removeprefix("socket://").rpartition(":")
    with socket.create_connection((host, int(port)), timeout=2.0) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(payload + b"\n*IDN?\n")  # the '\n' ends whatever partial line the payload left
        buf = b""
        deadline = time.monotonic() + 3.0
        while b"\n" + IDN + b"\n" not in b"\n" + buf:
            assert time.monotonic() < deadline, f"no identity after {payload!r}; got {buf[-300:]!r}"
            data = s.recv(65536)
            assert data, "simulator closed the connection"
            buf += data


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=600))
def test_simulator_survives_random_bytes(served: SimHandle, payload: bytes) -> None:
    _ask_idn_after(served, payload)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(PROTOCOLISH, max_size=8), st.sampled_from([b"\n", b"\r\n"]))
def test_simulator_survives_protocol_like_lines(served: SimHandle, lines: list[str], eol: bytes) -> None:
    payload = eol.join(line.encode("ascii", "replace") for line in lines)
    _ask_idn_after(served, payload)
