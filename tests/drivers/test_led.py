"""LED-1 driver against the LED-1 simulator (Modbus TCP, and RTU on a pty).

Every assertion goes through a public interface: the driver's API and events, the
simulator's control channel, or Modbus requests.
"""

from __future__ import annotations

import asyncio
import struct
import time
from typing import Any

import pytest
from pydantic import ValidationError

from drivers.base import DeviceFault, DeviceRefused, NotConnected, ProtocolError
from drivers.led import LedDriver, LedExposure
from simulators.harness import run_simulator
from tests.drivers.waiting import next_event, wait_state
from simulators.led import LedSimulator

pytestmark = pytest.mark.timeout(60)

#: a run that outlasts any test; a 1 s watchdog, so a loaded machine does not trip it
LONG = LedExposure(wavelength_nm=660, irradiance_mw_cm2=30, duration_s=60, watchdog_ms=1000)
#: the same with the shortest watchdog, for the tests about the watchdog
LONG_WD200 = LONG.model_copy(update={"watchdog_ms": 200})



async def clear_fault_when_possible(d: LedDriver, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            await d.clear_fault()
            return
        except DeviceRefused:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.02)


# --------------------------------------------------------------------------- parameters


def test_exposure_parameters_are_validated() -> None:
    ok = LedExposure(wavelength_nm=850, irradiance_mw_cm2=99.9, fluence_mj_cm2=4000)
    assert (ok.duty_pct, ok.watchdog_ms, ok.pulse_hz, ok.duration_s) == (100, 2000, 0, 0.0)
    bad: list[dict[str, Any]] = [
        dict(wavelength_nm=700, irradiance_mw_cm2=10, duration_s=1),
        dict(wavelength_nm=660, irradiance_mw_cm2=0.9, duration_s=1),
        dict(wavelength_nm=660, irradiance_mw_cm2=100.1, duration_s=1),
        dict(wavelength_nm=660, irradiance_mw_cm2=10.05, duration_s=1),
        dict(wavelength_nm=660, irradiance_mw_cm2=10, duration_s=1.25),
        dict(wavelength_nm=660, irradiance_mw_cm2=10, duration_s=3600.1),
        dict(wavelength_nm=660, irradiance_mw_cm2=10),  # neither end
        dict(wavelength_nm=660, irradiance_mw_cm2=10, duration_s=1, fluence_mj_cm2=10),  # both
        dict(wavelength_nm=660, irradiance_mw_cm2=10, fluence_mj_cm2=100001),
        dict(wavelength_nm=660, irradiance_mw_cm2=10, duration_s=1, duty_pct=9),
        dict(wavelength_nm=660, irradiance_mw_cm2=10, duration_s=1, pulse_hz=1001),
        dict(wavelength_nm=660, irradiance_mw_cm2=10, duration_s=1, watchdog_ms=199),
        dict(wavelength_nm=660, irradiance_mw_cm2=10, duration_s=1, colour="red"),
    ]
    for kw in bad:
        with pytest.raises(ValidationError):
            LedExposure(**kw)


# --------------------------------------------------------------------------- over TCP


async def test_identity_channels_and_a_wrong_model() -> None:
    async with run_simulator("led") as h, LedDriver(h.endpoint) as d:
        ident = await d.identify()
        assert (ident.model, ident.firmware) == ("LED-1", "1.02")
        assert await d.channels() == [630, 660, 810, 850]
        st = await d.status()
        assert (st.state, st.output_on, st.fault) == ("idle", False, None)
        assert set(st.readings) == {"irradiance_mw_cm2", "elapsed_s", "fluence_mj_cm2", "head_temp_c",
                                    "skin_temp_c", "distance_mm"}
        assert st.readings["distance_mm"] == 10
    async with run_simulator("pemf") as h:
        with pytest.raises(ProtocolError):
            await LedDriver(h.endpoint).connect()  # a PEMF-1 answers with MODEL "P1"


async def test_exposures_end_by_duration_and_by_fluence_with_the_devices_totals() -> None:
    async with run_simulator("led") as h, LedDriver(h.endpoint) as d, h.client() as ctl:
        # by duration, 1.2 s with a 200 ms watchdog: the driver's heartbeat keeps it alive
        await d.configure(LedExposure(wavelength_nm=810, irradiance_mw_cm2=40, duration_s=1.2, watchdog_ms=200))
        assert d.heartbeat_interval == pytest.approx(0.05)
        st = await ctl.state()
        assert st["setpoints"]["CHANNEL"] == 2 and st["setpoints"]["IRRADIANCE"] == 400
        async with d.subscribe() as q:
            await d.start()
            assert d.energised
            kinds = []
            while True:
                ev = await next_event(q, "progress", "exposure_done", "fault", "heartbeat_failed")
                kinds.append(ev.kind)
                if ev.kind == "exposure_done":
                    break
        assert "fault" not in kinds and "heartbeat_failed" not in kinds
        assert kinds.count("progress") >= 1
        assert not d.energised
        sim = await ctl.state()
        assert sim["state"] == "done" and sim["fault"] == 0 and sim["output_on"] is False
        assert sim["setpoints"]["HEARTBEAT"] >= 10  # changed every 50 ms
        assert ev.data["elapsed_s"] == 1.2 == sim["run"]["elapsed_s"]
        assert ev.data["fluence_mj_cm2"] == int(sim["run"]["fluence_mj_cm2"])
        assert ev.data["fluence_mj_cm2"] == pytest.approx(48, abs=1)
        first = sim["fluence_mj_cm2"]

        # by fluence: 50 mW/cm2 at 50 % duty to 20 mJ/cm2 takes 0.8 s
        await d.configure(LedExposure(wavelength_nm=630, irradiance_mw_cm2=50, fluence_mj_cm2=20,
                                      duty_pct=50, pulse_hz=10, watchdog_ms=200))
        async with d.subscribe() as q:
            await d.start()
            ev = await next_event(q, "exposure_done", "fault")
        assert ev.kind == "exposure_done"
        sim = await ctl.state()
        assert ev.data["fluence_mj_cm2"] == 20 and sim["run"]["fluence_mj_cm2"] == pytest.approx(20)
        assert ev.data["elapsed_s"] == pytest.approx(0.8, abs=0.15)  # 0.1 s register, noise
        assert ev.data["elapsed_s"] == int(sim["run"]["elapsed_s"] * 10 + 1e-6) / 10
        assert sim["fluence_mj_cm2"] == pytest.approx(first + 20)
        assert sim["elapsed_s"] == pytest.approx(1.2 + sim["run"]["elapsed_s"])
        st = await d.status()
        assert (st.state, st.output_on) == ("done", False)
        assert st.readings["fluence_mj_cm2"] == 20


async def test_stop_and_configure_while_on() -> None:
    async with run_simulator("led") as h, LedDriver(h.endpoint) as d, h.client() as ctl:
        await d.configure(LONG)
        await d.start()
        assert (await ctl.state())["output_on"] is True
        with pytest.raises(DeviceRefused) as err:
            await d.configure(LONG)
        assert err.value.code == 4
        with pytest.raises(DeviceRefused) as err:
            await d.link.write_register(1, 5)
        assert (err.value.code, err.value.text) == (3, "illegal data value")
        await d.stop()
        assert not d.energised
        st = await ctl.state()
        assert (st["output_on"], st["state"]) == (False, "idle")
        assert (await d.status()).state == "idle"


@pytest.mark.parametrize(("fault", "code"), [("head_overheat", 1), ("skin_overheat", 2), ("led_open", 3)])
async def test_every_fault_reaches_the_driver(fault: str, code: int) -> None:
    async with run_simulator("led") as h, LedDriver(h.endpoint) as d, h.client() as ctl:
        await d.configure(LONG)
        async with d.subscribe() as q:
            await d.start()
            await ctl.inject(fault, count=-1)
            ev = await next_event(q, "fault", "exposure_done")
        assert ev.kind == "fault" and ev.data["code"] == code and ev.data["text"]
        assert not d.energised
        st = await d.status()
        assert (st.state, st.output_on, st.fault) == ("fault", False, code)
        assert st.fault_text == LedDriver.fault_texts[code]
        assert (await ctl.state())["output_on"] is False
        with pytest.raises(DeviceRefused) as err:  # the cause is still there
            await d.clear_fault()
        assert err.value.code == 4
        with pytest.raises(DeviceRefused):
            await d.start()  # a latched fault refuses the start
        await ctl.clear(fault)
        await clear_fault_when_possible(d)
        st = await d.status()
        assert (st.state, st.fault) == ("idle", None)


async def test_applicator_removed_fails_the_start() -> None:
    async with run_simulator("led") as h, LedDriver(h.endpoint) as d, h.client() as ctl:
        await d.configure(LONG)
        await ctl.inject("applicator_removed", count=-1)
        async with d.subscribe() as q:
            with pytest.raises(DeviceFault) as err:
                await d.start()
            assert err.value.code == 4
            ev = await next_event(q, "fault")
        assert ev.data["code"] == 4 and ev.data["distance_mm"] == 80
        assert not d.energised
        assert (await ctl.state())["output_on"] is False
        await ctl.clear("applicator_removed")
        await d.clear_fault()
        await d.start()  # close enough again
        assert (await d.status()).state == "on"
        assert (await d.safe_state()).confirmed


@pytest.mark.parametrize(("distance", "reads", "starts"), [(30.4, 30, True), (30.6, 31, False)])
async def test_the_distance_limit_is_judged_as_the_register_reads(distance: float, reads: int, starts: bool) -> None:
    # "above 30 mm" at 1 mm resolution: 30.4 mm reads 30 and starts; 30.6 mm reads 31 and faults
    async with run_simulator("led") as h, LedDriver(h.endpoint) as d, h.client() as ctl:
        await d.configure(LONG)
        await ctl.set("distance_mm", distance)
        assert (await d.status()).readings["distance_mm"] == reads
        if starts:
            await d.start()
            assert (await d.status()).state == "on"
        else:
            with pytest.raises(DeviceFault) as err:
                await d.start()
            assert err.value.code == 4
        assert (await d.safe_state()).confirmed


async def test_watchdog_fault_when_the_device_stops_hearing_the_heartbeat() -> None:
    async with run_simulator("led") as h, LedDriver(h.endpoint) as d, h.client() as ctl:
        await d.configure(LONG_WD200)
        async with d.subscribe() as q:
            await d.start()
            await ctl.inject("stall", count=-1)
            failed = await next_event(q, "heartbeat_failed")
            assert "no reply" in failed.data["error"]
            st = await wait_state(ctl, lambda s: s["state"] == "fault")
            assert (st["fault"], st["output_on"]) == (5, False)
            await ctl.clear("stall")
            ev = await next_event(q, "fault")
        assert ev.data["code"] == 5 and ev.data["text"] == "watchdog"
        st = await d.status()
        assert (st.state, st.fault) == ("fault", 5)
        await d.clear_fault()
        assert (await d.status()).state == "idle"


async def test_safe_state_from_every_state() -> None:
    async with run_simulator("led") as h, LedDriver(h.endpoint) as d, h.client() as ctl:
        short = LedExposure(wavelength_nm=660, irradiance_mw_cm2=30, duration_s=0.2, watchdog_ms=200)
        # idle
        t0 = time.monotonic()
        r = await d.safe_state()
        assert r.confirmed and 0 < r.ms <= (time.monotonic() - t0) * 1000, r
        # on
        await d.configure(LONG)
        await d.start()
        t0 = time.monotonic()
        r = await d.safe_state()
        t1 = time.monotonic()
        assert r.confirmed and 0 < r.ms <= (t1 - t0) * 1000, r
        assert not d.energised
        st = await ctl.state()
        assert (st["output_on"], st["state"]) == (False, "idle")
        assert t0 <= st["output_changed_at"] <= t1  # the device itself turned off within the call
        assert (await d.safe_state()).confirmed  # idempotent
        # done
        await d.configure(short)
        async with d.subscribe() as q:
            await d.start()
            await next_event(q, "exposure_done")
        r = await d.safe_state()
        assert r.confirmed and "STATE=done" in r.detail
        # fault
        await d.configure(LONG)
        async with d.subscribe() as q:
            await d.start()
            await ctl.inject("led_open", count=-1)
            await next_event(q, "fault")
        r = await d.safe_state()
        assert r.confirmed and "STATE=fault" in r.detail
        # the reply to OUTPUT=0 is lost: the read-back still confirms it (the output is
        # switched on over the link, not by start(), so no watch read can take the drop)
        await ctl.clear()
        await d.clear_fault()
        await d.link.write_coil(0, True)
        assert (await ctl.state())["output_on"] is True
        await ctl.inject("drop_reply")
        r = await d.safe_state()
        assert r.confirmed and "write" in r.detail, r
        assert (await ctl.state())["output_on"] is False


async def test_safe_state_does_not_wait_behind_a_request_whose_reply_was_lost() -> None:
    # a 1 s reply timeout: a write queued behind the lost reply would go out ~1 s late
    async with run_simulator("led") as h, LedDriver(h.endpoint, timeout=1.0) as d, h.client() as ctl:
        await d.configure(LONG)
        await d.start()
        await ctl.inject("drop_reply")
        # the device swallowed the reply to the driver's next watch or heartbeat request:
        # that request now holds the driver's connection until its timeout
        await wait_state(ctl, lambda s: "drop_reply" not in s["injected"], timeout=2.0)
        t0 = time.monotonic()
        r = await d.safe_state()
        st = await ctl.state()
        assert (st["output_on"], st["state"]) == (False, "idle"), st
        assert st["output_changed_at"] - t0 < 0.050, (st["output_changed_at"] - t0, r)
        assert r.confirmed, r


async def test_a_fault_is_seen_between_heartbeats() -> None:
    # a 2 s watchdog: heartbeats 0.25 s apart; the driver watches STATE in between, so
    # the fault event (carrying the device's figures) follows the device's own switch-off
    # by a watch period, by the device's clock and the driver's event time
    async with run_simulator("led") as h, LedDriver(h.endpoint) as d, h.client() as ctl:
        await d.configure(LONG.model_copy(update={"watchdog_ms": 2000}))
        assert d.heartbeat_interval == pytest.approx(0.25)
        lags = []
        for _ in range(5):
            async with d.subscribe() as q:
                await d.start()
                await ctl.inject("led_open", count=-1)
                ev = await next_event(q, "fault")
            st = await ctl.state()
            assert ev.data["code"] == 3 and "elapsed_s" in ev.data
            lags.append(ev.t - st["output_changed_at"])
            await ctl.clear()
            await clear_fault_when_possible(d)
        # the median: one late read on a busy machine is not what this is about
        assert sorted(lags)[2] < 0.050, lags


async def test_safe_state_against_a_stalled_device_is_unconfirmed_quickly() -> None:
    async with run_simulator("led") as h, LedDriver(h.endpoint) as d, h.client() as ctl:
        await d.configure(LONG_WD200)
        await d.start()
        await ctl.inject("stall", count=-1)
        t0 = time.monotonic()
        r = await d.safe_state()  # never raises
        assert not r.confirmed and 0 < r.ms <= (time.monotonic() - t0) * 1000, r
        assert not d.energised
        # the heartbeat stopped with it, so the device's own watchdog switches off
        st = await wait_state(ctl, lambda s: not s["output_on"], timeout=2.0)
        assert (st["state"], st["fault"]) == ("fault", 5)
        await ctl.clear("stall")
        r = await d.safe_state()
        assert r.confirmed


async def test_recovery_after_dropped_replies() -> None:
    async with run_simulator("led") as h, LedDriver(h.endpoint) as d, h.client() as ctl:
        await ctl.inject("drop_reply")
        st = await d.status()  # a read is retried once
        assert st.state == "idle"
        assert (await ctl.state())["injected"] == {}
        await ctl.inject("drop_reply")
        await d.configure(LONG)  # a write whose reply is lost is read back (test_lost_replies_modbus)
        assert (await ctl.state())["injected"] == {}
        ident = await d.identify()
        assert ident.model == "LED-1"


async def test_a_lost_connection_is_reported_and_typed() -> None:
    async with run_simulator("led") as h:
        d = LedDriver(h.endpoint)
        await d.connect()
        events = d.subscribe()
        q = await events.__aenter__()
    # the simulator is gone
    try:
        ev = await next_event(q, "connection_lost")
        assert ev.data["endpoint"] == h.endpoint
        with pytest.raises(NotConnected):
            await d.status()
        r = await d.safe_state()
        assert not r.confirmed and "not connected" in r.detail, r
    finally:
        await events.__aexit__(None, None, None)
        await d.close()


async def test_not_connected() -> None:
    async with run_simulator("led") as h:
        endpoint = h.endpoint
    d = LedDriver(endpoint)
    with pytest.raises(NotConnected):
        await d.connect()


# --------------------------------------------------------------------------- over RTU


async def test_exposure_over_rtu_on_a_pty() -> None:
    async with run_simulator("led", rtu_pty=True) as h, h.client() as ctl:
        assert h.endpoint.startswith("modbus-rtu:///dev/")
        async with LedDriver(h.endpoint) as d:
            assert (await d.identify()).model == "LED-1"
            await d.configure(LedExposure(wavelength_nm=850, irradiance_mw_cm2=20, duration_s=0.6, watchdog_ms=1000))
            async with d.subscribe() as q:
                await d.start()
                ev = await next_event(q, "exposure_done", "fault")
            assert ev.kind == "exposure_done" and ev.data["elapsed_s"] == 0.6
            sim = await ctl.state()
            assert ev.data["fluence_mj_cm2"] == int(sim["run"]["fluence_mj_cm2"])
            assert sim["wavelength_nm"] == 850
            assert (await d.safe_state()).confirmed


# --------------------------------------------------------------------------- physics on a simulated clock


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def led_on_fake_clock() -> tuple[LedSimulator, FakeClock]:
    clock = FakeClock()
    sim = LedSimulator(seed=3)
    sim.now = clock  # type: ignore[method-assign]
    sim._t = sim._last_write = clock.t
    return sim, clock


def write(sim: LedSimulator, fc: int, addr: int, *values: int) -> bytes:
    if fc == 0x10:
        pdu = struct.pack(">BHHB", fc, addr, len(values), 2 * len(values)) + struct.pack(f">{len(values)}H", *values)
    else:
        pdu = struct.pack(">BHH", fc, addr, values[0])
    reply = sim.handle_request(1, pdu)
    assert reply is not None and reply[0] == fc, reply
    return reply


def run_for(sim: LedSimulator, clock: FakeClock, seconds: float, heartbeat_every: float = 1.0) -> None:
    end = clock.t + seconds
    next_hb = clock.t
    while clock.t < end and sim.output_on:
        clock.t += 0.05
        if clock.t >= next_hb:
            write(sim, 0x06, 9, int(clock.t) & 0xFFFF)
            next_hb += heartbeat_every
        sim.advance()


def test_a_long_strong_exposure_trips_the_skin_limit() -> None:
    sim, clock = led_on_fake_clock()
    write(sim, 0x10, 1, 1000, 0, 36000)  # 100 mW/cm2 for an hour
    write(sim, 0x05, 0, 0xFF00)
    run_for(sim, clock, 600)
    snap = sim.snapshot()
    assert (snap["state"], snap["fault"]) == ("fault", 2)
    assert 120 < snap["elapsed_s"] < 400  # minutes, not seconds
    assert snap["skin_temp_c"] > 41.0 and snap["head_temp_c"] < 55.0


def test_a_gentle_exposure_stays_cool_and_delivers_irradiance_times_duty_times_time() -> None:
    sim, clock = led_on_fake_clock()
    write(sim, 0x10, 1, 100, 0, 3000)  # 10 mW/cm2 for 300 s
    write(sim, 0x06, 7, 40)  # 40 % duty
    write(sim, 0x05, 0, 0xFF00)
    run_for(sim, clock, 400)
    snap = sim.snapshot()
    assert (snap["state"], snap["fault"]) == ("done", 0)
    assert snap["elapsed_s"] == 300.0
    assert snap["fluence_mj_cm2"] == pytest.approx(10 * 0.4 * 300, rel=0.005)
    assert snap["skin_temp_c"] < 34.0


async def test_safe_state_opens_a_lost_connection_again() -> None:
    # the room's upkeep closes a link whose connection was lost and opens it again seconds
    # later; a safe state in between reaches the device itself rather than saying unconfirmed
    async with run_simulator("led") as h, LedDriver(h.endpoint) as d, h.client() as ctl:
        await d.link.write_coil(0, True)  # on, as a session left it
        await d.link.close()
        r = await d.safe_state()
        assert r.confirmed, r
        assert (await ctl.state())["output_on"] is False


async def test_a_start_that_lands_behind_the_safe_states_off_is_switched_off_again() -> None:
    """Soak session #309: the read-back after OUTPUT=0 found the LED on again (a start that
    reached the device behind the off); the safe state was unconfirmed and the output stayed
    on until the stop path's second pass, 62 ms later. It now writes the off again at once."""
    from simulators.devsupport.proxy import StartBehindStop

    async with run_simulator("led") as h, h.client() as ctl:
        port = int(h.endpoint.rsplit(":", 1)[1].split("?")[0])
        async with StartBehindStop(port) as wire, LedDriver(f"modbus-tcp://127.0.0.1:{wire.port}?unit=1") as d:
            await d.configure(LONG)
            await d.start()
            wire.armed = True
            r = await d.safe_state()
            assert wire.injected.is_set()
            assert r.confirmed, r
            st = await ctl.state()
            assert (st["output_on"], st["state"]) == (False, "idle")


async def test_a_start_after_a_safe_state_that_came_since_its_configure_is_refused() -> None:
    """The 01:15 soak hour's #597 (and #326, #580): a stop came while a resumed exposure
    was between its configure and its start; the safe state was confirmed (5.2 ms), then
    the step, which outlived it, switched the LED on, until the stop's second pass 55 ms
    later. A start now belongs to its configure: a safe state in between voids it."""
    from drivers.base import Preempted

    async with run_simulator("led") as h, h.client() as ctl, LedDriver(h.endpoint) as d:
        await d.configure(LONG)
        assert (await d.safe_state()).confirmed
        with pytest.raises(Preempted):
            await d.start()
        st = await ctl.state()
        assert (st["output_on"], st["state"]) == (False, "idle")
        await d.configure(LONG)  # configured anew, by a run that began after the stop
        await d.start()
        assert (await ctl.state())["output_on"] is True
        await d.safe_state()


async def test_a_start_that_reaches_the_device_after_a_safe_state_switches_itself_off() -> None:
    """The same with the start already on the wire when the safe state comes: its OUTPUT=1
    reaches the device behind the safe state's off (held back on the link here), so the
    start writes the off again as soon as its reply comes, and raises."""
    from drivers.base import Preempted
    from simulators.devsupport.proxy import StartHeld

    async with run_simulator("led") as h, h.client() as ctl:
        port = int(h.endpoint.rsplit(":", 1)[1].split("?")[0])
        async with StartHeld(port) as wire, LedDriver(f"modbus-tcp://127.0.0.1:{wire.port}?unit=1") as d:
            await d.configure(LONG)
            wire.armed = True
            starting = asyncio.create_task(d.start())
            await wire.held.wait()
            assert (await d.safe_state()).confirmed  # on a connection of its own: the start holds the link
            wire.release()
            with pytest.raises(Preempted):
                await starting
            st = await ctl.state()
            assert (st["output_on"], st["state"]) == (False, "idle")
