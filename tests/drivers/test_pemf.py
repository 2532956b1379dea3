"""PEMF-1 driver against the PEMF-1 simulator (Modbus TCP, and RTU on a pty)."""

from __future__ import annotations

import asyncio
import math
import struct
import time
from typing import Any

import pytest
from pydantic import ValidationError

from drivers.base import DeviceFault, DeviceRefused
from drivers.pemf import PemfDriver, PemfExposure
from simulators.harness import run_simulator
from tests.drivers.waiting import next_event, wait_state
from simulators.pemf import PemfSimulator, waveform

pytestmark = pytest.mark.timeout(60)

#: a run that outlasts any test; a 1 s watchdog, so a loaded machine does not trip it
LONG = PemfExposure(waveform="trapezoid", frequency_hz=15, peak_field_mt=2, duration_s=60, watchdog_ms=1000)
#: the same with the shortest watchdog, for the tests about the watchdog
LONG_WD200 = LONG.model_copy(update={"watchdog_ms": 200})



def test_exposure_parameters_are_validated() -> None:
    ok = PemfExposure(waveform="sine", frequency_hz=0.1, peak_field_mt=0.01, duration_s=0.1)
    assert ok.watchdog_ms == 2000
    bad: list[dict[str, Any]] = [
        dict(waveform="saw", frequency_hz=15, peak_field_mt=1, duration_s=1),
        dict(waveform="sine", frequency_hz=0.05, peak_field_mt=1, duration_s=1),
        dict(waveform="sine", frequency_hz=100.1, peak_field_mt=1, duration_s=1),
        dict(waveform="sine", frequency_hz=15.05, peak_field_mt=1, duration_s=1),
        dict(waveform="sine", frequency_hz=15, peak_field_mt=20.01, duration_s=1),
        dict(waveform="sine", frequency_hz=15, peak_field_mt=1.005, duration_s=1),
        dict(waveform="sine", frequency_hz=15, peak_field_mt=1, duration_s=0),
        dict(waveform="sine", frequency_hz=15, peak_field_mt=1, duration_s=3600.1),
        dict(waveform="sine", frequency_hz=15, peak_field_mt=1, duration_s=1, watchdog_ms=10001),
    ]
    for kw in bad:
        with pytest.raises(ValidationError):
            PemfExposure(**kw)


async def test_identity_and_an_exposure_ended_by_duration() -> None:
    async with run_simulator("pemf") as h, PemfDriver(h.endpoint) as d, h.client() as ctl:
        ident = await d.identify()
        assert (ident.model, ident.firmware) == ("PEMF-1", "1.01")
        await d.configure(PemfExposure(waveform="square", frequency_hz=12.5, peak_field_mt=1.5,
                                       duration_s=1.2, watchdog_ms=200))
        sim = await ctl.state()
        assert sim["setpoints"] == {"WAVEFORM": 1, "FREQ": 125, "PEAK_FIELD": 150, "DURATION": 12,
                                    "WATCHDOG_MS": 200, "HEARTBEAT": 0}
        async with d.subscribe() as q:
            await d.start()
            kinds = []
            while True:
                ev = await next_event(q, "progress", "exposure_done", "fault", "heartbeat_failed")
                kinds.append(ev.kind)
                if ev.kind == "progress":
                    assert ev.data["field_mt"] == pytest.approx(1.5, rel=0.03)
                    assert ev.data["coil_current_a"] == pytest.approx(0.75, abs=0.02)  # square: RMS = peak
                if ev.kind == "exposure_done":
                    break
        assert kinds.count("progress") >= 1 and "fault" not in kinds and "heartbeat_failed" not in kinds
        sim = await ctl.state()
        assert ev.data == {"elapsed_s": 1.2, "pulses": 15}  # 12.5 Hz x 1.2 s
        assert (sim["state"], sim["pulses"], sim["elapsed_s"]) == ("done", 15, 1.2)
        st = await d.status()
        assert (st.state, st.output_on, st.fault) == ("done", False, None)
        assert st.readings["pulses"] == 15 and st.readings["coil_current_a"] == 0.0


@pytest.mark.parametrize(("shape", "rms"), [("sine", math.sqrt(0.5)), ("square", 1.0),
                                             ("trapezoid", math.sqrt(0.1 / 3 + 0.3 + 0.1 / 3))])
async def test_field_and_current_follow_the_waveform(shape: str, rms: float) -> None:
    async with run_simulator("pemf") as h, PemfDriver(h.endpoint) as d:
        await d.configure(PemfExposure(waveform=shape, frequency_hz=20, peak_field_mt=10, duration_s=30))
        async with d.subscribe() as q:
            await d.start()
            ev = await next_event(q, "progress", "fault")
        assert ev.kind == "progress", ev
        assert ev.data["field_mt"] == pytest.approx(10.0, rel=0.03)
        assert ev.data["coil_current_a"] == pytest.approx(5.0 * rms, rel=0.03)  # 2 mT per A
        assert (await d.safe_state()).confirmed


def test_the_waveforms_sampled() -> None:
    phase = __import__("numpy").linspace(0, 1, 1000, endpoint=False)
    trap = waveform(2, phase)
    assert trap[50] == pytest.approx(0.5) and trap[100:400].min() == 1.0 and trap[500:].max() == 0.0
    sq = waveform(1, phase)
    assert set(sq[:500]) == {1.0} and set(sq[500:]) == {-1.0}
    assert waveform(0, phase).min() == pytest.approx(-1.0)


@pytest.mark.parametrize(("fault", "code"), [("overheat", 1), ("coil_open", 2), ("field_drift", 3)])
async def test_every_fault_reaches_the_driver(fault: str, code: int) -> None:
    async with run_simulator("pemf") as h, PemfDriver(h.endpoint) as d, h.client() as ctl:
        await d.configure(LONG)
        async with d.subscribe() as q:
            await d.start()
            await ctl.inject(fault, count=-1)
            ev = await next_event(q, "fault", "exposure_done", timeout=4.0)
        assert ev.kind == "fault" and ev.data["code"] == code and ev.data["text"]
        assert not d.energised
        st = await d.status()
        assert (st.state, st.output_on, st.fault) == ("fault", False, code)
        assert (await ctl.state())["output_on"] is False
        with pytest.raises(DeviceRefused):
            await d.clear_fault()
        await ctl.clear(fault)
        deadline = time.monotonic() + 3
        while True:
            try:
                await d.clear_fault()
                break
            except DeviceRefused:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
        assert (await d.status()).state == "idle"


async def test_a_wrong_coil_resistance_is_a_coil_fault() -> None:
    async with run_simulator("pemf") as h, PemfDriver(h.endpoint) as d, h.client() as ctl:
        await d.configure(LONG)
        await ctl.set("coil_ohm", 1.0)  # a shorted turn: twice the current
        async with d.subscribe() as q:
            try:
                await d.start()  # the fault may latch before start() reads STATE back
            except DeviceFault as exc:
                assert exc.code == 2
            ev = await next_event(q, "fault")
        assert ev.data["code"] == 2
        await ctl.set("coil_ohm", 2.1)
        await d.clear_fault()
        await d.start()
        assert (await d.status()).state == "on"
        await d.stop()
        assert (await ctl.state())["state"] == "idle"


async def test_watchdog_and_safe_state_against_a_stall() -> None:
    async with run_simulator("pemf") as h, PemfDriver(h.endpoint) as d, h.client() as ctl:
        await d.configure(LONG_WD200)
        await d.start()
        await ctl.inject("stall", count=-1)
        t0 = time.monotonic()
        r = await d.safe_state()
        assert not r.confirmed and 0 < r.ms <= (time.monotonic() - t0) * 1000
        st = await wait_state(ctl, lambda s: not s["output_on"], timeout=2.0)
        assert (st["state"], st["fault"]) == ("fault", 5)
        await ctl.clear("stall")
        async with d.subscribe() as q:
            st2 = await d.status()
            ev = await next_event(q, "fault")
        assert (st2.state, st2.fault, ev.data["code"]) == ("fault", 5, 5)
        assert (await d.safe_state()).confirmed


async def test_exposure_over_rtu_on_a_pty() -> None:
    async with run_simulator("pemf", rtu_pty=True) as h, h.client() as ctl:
        async with PemfDriver(h.endpoint) as d:
            await d.configure(PemfExposure(waveform="sine", frequency_hz=10, peak_field_mt=1, duration_s=0.5,
                                           watchdog_ms=1000))
            async with d.subscribe() as q:
                await d.start()
                ev = await next_event(q, "exposure_done", "fault")
            assert ev.kind == "exposure_done" and ev.data == {"elapsed_s": 0.5, "pulses": 5}
            assert (await ctl.state())["pulses"] == 5
            await ctl.inject("drop_reply")
            assert (await d.status()).state == "done"  # the read is retried once
            assert (await d.safe_state()).confirmed


def test_a_long_run_at_a_high_field_overheats_the_coil() -> None:
    now = [1000.0]
    sim = PemfSimulator(seed=1)
    sim.now = lambda: now[0]  # type: ignore[method-assign]
    sim._t = sim._last_write = now[0]

    def req(pdu: bytes) -> bytes:
        reply = sim.handle_request(2, pdu)
        assert reply is not None and reply[0] == pdu[0], reply
        return reply

    req(struct.pack(">BHHB3H", 0x10, 0, 3, 6, 0, 50, 2000))  # sine, 5 Hz, 20 mT
    req(struct.pack(">BHH", 0x06, 5, 10000))
    req(struct.pack(">BHH", 0x05, 0, 0xFF00))
    while sim.output_on and now[0] < 1600:
        now[0] += 0.05
        if int(now[0] * 20) % 100 == 0:
            req(struct.pack(">BHH", 0x06, 6, int(now[0]) & 0xFFFF))
        sim.advance()
    snap = sim.snapshot()
    assert (snap["state"], snap["fault"]) == ("fault", 1)
    assert 20 < snap["elapsed_s"] < 300
    assert snap["pulses"] == math.floor(snap["elapsed_s"] * 5 + 1e-9)


def _offline_pemf(seed: int = 1) -> tuple[PemfSimulator, list[float], Any]:
    """A PEMF simulator on a hand-driven clock, and a request function over its PDU handler."""
    now = [1000.0]
    sim = PemfSimulator(seed=seed)
    sim.now = lambda: now[0]  # type: ignore[method-assign]
    sim._t = sim._last_write = now[0]

    def req(pdu: bytes) -> bytes:
        reply = sim.handle_request(2, pdu)
        assert reply is not None, pdu
        return reply

    return sim, now, req


def _run_for(sim: PemfSimulator, now: list[float], req: Any, seconds: float) -> None:
    end = now[0] + seconds
    while now[0] < end:
        now[0] += 0.05
        req(struct.pack(">BHH", 0x06, 6, int(now[0] * 20) & 0xFFFF))  # HEARTBEAT
        sim.advance()


def test_injected_overheat_latches_fault_1_even_at_a_cold_ambient() -> None:
    sim, now, req = _offline_pemf()
    sim.control({"op": "set", "name": "ambient_c", "value": 0.0})
    sim.control({"op": "inject", "fault": "overheat", "count": -1})
    _run_for(sim, now, req, 2.0)
    snap = sim.snapshot()
    assert (snap["state"], snap["fault"]) == ("fault", 1)
    assert snap["coil_temp_c"] > 45.0


def test_fault_3_from_a_drifting_coil_cannot_be_reset_while_the_coil_is_still_off() -> None:
    sim, now, req = _offline_pemf()
    sim.control({"op": "set", "name": "coil_ohm", "value": 2.7})  # field 26 % low, current within 30 %
    req(struct.pack(">BHHB3H", 0x10, 0, 3, 6, 1, 100, 1000))  # square, 10 Hz, 10 mT
    req(struct.pack(">BHH", 0x06, 5, 100))
    req(struct.pack(">BHH", 0x05, 0, 0xFF00))
    _run_for(sim, now, req, 1.5)
    assert (sim.snapshot()["state"], sim.snapshot()["fault"]) == ("fault", 3)
    assert req(struct.pack(">BHH", 0x05, 1, 0xFF00)) == bytes([0x85, 0x04])  # cause still there
    sim.control({"op": "set", "name": "coil_ohm", "value": 2.0})
    assert req(struct.pack(">BHH", 0x05, 1, 0xFF00))[0] == 0x05
    assert sim.snapshot()["state"] == "idle"


def test_field_meas_is_the_peak_without_an_upward_bias() -> None:
    sim, now, req = _offline_pemf()
    req(struct.pack(">BHHB3H", 0x10, 0, 3, 6, 0, 100, 2000))  # sine, 10 Hz, 20 mT
    req(struct.pack(">BHH", 0x06, 5, 600))
    req(struct.pack(">BHH", 0x05, 0, 0xFF00))
    readings = []
    for _ in range(40):
        _run_for(sim, now, req, 0.25)
        reply = req(struct.pack(">BHH", 0x04, 2, 1))  # FIELD_MEAS, 0.01 mT
        readings.append(struct.unpack(">H", reply[2:4])[0])
    mean = sum(readings) / len(readings)
    assert abs(mean - 2000) < 10, readings  # within 0.5 %: a draw per sample read 1-2 % high
