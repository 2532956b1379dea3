"""EPG-1: the driver against the simulator over real TCP (and once over a pty).

Assertions go through public interfaces only: the wire (a raw host socket), the
driver's API and events, and the simulator's control channel.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import re
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pydantic
import pytest

from drivers.base import DeviceRefused, DeviceTimeout, Identity, NotConnected, ProtocolError
from drivers.epg import EpgDriver, EpgTrain, TrainReport
from simulators.control import ControlClient
from simulators.harness import SimHandle, run_simulator, spawn_simulator
from tests.drivers import waiting

pytestmark = pytest.mark.timeout(30)

IDN = "DeviceHub-Sim,EPG-1,SIM00001,1.0.0"
ERR_TEXT = {
    -100: "Command error (unknown header)",
    -104: "Data type error",
    -222: "Data out of range / not allowed in this state",
    -224: "Illegal parameter value",
}


# ============================================================================ helpers


class Wire:
    """A raw host on the device port: lines out, reply lines in, ``!`` events kept apart."""

    def __init__(self, endpoint: str) -> None:
        host, _, port = endpoint.removeprefix("socket://").rpartition(":")
        self.address = (host, int(port))
        self.events: list[str] = []
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> "Wire":
        self._reader, self._writer = await asyncio.open_connection(*self.address)
        self._writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._writer is not None
        self._writer.close()

    async def send(self, data: bytes) -> None:
        assert self._writer is not None
        self._writer.write(data)
        await self._writer.drain()

    async def line(self, timeout: float = 1.0) -> str:
        assert self._reader is not None
        raw = await asyncio.wait_for(self._reader.readline(), timeout)
        if not raw:
            raise ConnectionError("simulator closed the connection")
        return raw.decode("ascii").rstrip("\n")

    async def reply(self, timeout: float = 1.0) -> str:
        while True:
            line = await self.line(timeout)
            if line.startswith("!"):
                self.events.append(line)
            else:
                return line

    async def ask(self, line: str) -> str:
        await self.send(line.encode() + b"\n")
        return await self.reply()

    async def event(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            for i, ev in enumerate(self.events):
                if ev.startswith(prefix):
                    return self.events.pop(i)
            self.events.append(await self.line(max(0.01, deadline - time.monotonic())))


#: this module waits at most 2 s for an event (and, EPG, for a state) unless told otherwise
next_event = functools.partial(waiting.next_event, timeout=2.0)
until = functools.partial(waiting.wait_state, timeout=2.0)


def err(code: int) -> str:
    return f'ERR {code},"{ERR_TEXT[code]}"'


FAST = EpgTrain(amplitude_v=10, width_ms=1, period_ms=10, pulses=20)


# ============================================================================ fixtures


@pytest.fixture
async def sim() -> AsyncIterator[SimHandle]:
    async with run_simulator("epg", seed=1) as handle:
        yield handle


@pytest.fixture
async def ctl(sim: SimHandle) -> AsyncIterator[ControlClient]:
    async with sim.client() as client:
        yield client


@pytest.fixture
async def drv(sim: SimHandle) -> AsyncIterator[EpgDriver]:
    driver = EpgDriver(sim.endpoint)
    await driver.connect()
    try:
        yield driver
    finally:
        await driver.close()


# ============================================================================ identity and dialogue


async def test_identity(drv: EpgDriver) -> None:
    assert await drv.identify() == Identity("DeviceHub-Sim", "EPG-1", "SIM00001", "1.0.0")


def _announcement_line(proc_lines: list[dict[str, Any]]) -> dict[str, Any]:
    assert len(proc_lines) == 1
    return proc_lines[0]


async def test_spawned_simulator_announces_itself_exactly() -> None:
    with spawn_simulator("epg", "--port", "0") as (proc, lines):
        line = _announcement_line(lines)
        assert list(line) == ["device", "endpoint", "control"]
        assert line["device"] == "epg"
        assert re.fullmatch(r"socket://127\.0\.0\.1:\d+", line["endpoint"])
        assert re.fullmatch(r"127\.0\.0\.1:\d+", line["control"])
        assert int(line["endpoint"].rsplit(":", 1)[1]) != 0
        async with EpgDriver(line["endpoint"]) as driver:
            assert (await driver.identify()).model == "EPG-1"
        async with ControlClient(line["control"]) as client:
            state = await client.state()
        assert state["device"] == "epg" and state["state"] == "idle" and state["output_on"] is False
        assert proc.poll() is None


async def test_dialogue_rules_on_the_wire(sim: SimHandle) -> None:
    async with Wire(sim.endpoint) as w:
        # case-insensitive, '\r' ignored, spaces around tolerated
        assert await w.ask("*idn?") == IDN
        await w.send(b"sour:volt?\r\n")
        assert await w.reply() == "10"
        # several lines in one write: exactly one reply each, in order
        await w.send(b"PULS:COUN 7\nPULS:COUN?\nBOGUS\n\nPULS:POL bip\nPULS:POL?\n")
        assert [await w.reply() for _ in range(6)] == ["OK", "7", err(-100), err(-100), "OK", "BIP"]
        # a line split across writes is still one line
        await w.send(b"CURR:")
        await w.send(b"LIM?\n")
        assert await w.reply() == "20"
        # 128 bytes are allowed, 129 are not; either way one reply and the link goes on
        assert await w.ask("SOUR:VOLT" + " " * (128 - 13) + "12.5") == "OK"
        assert await w.ask("SOUR:VOLT" + " " * (129 - 13) + "12.5") == err(-100)
        await w.send(b"X" * 5000 + b"\r\n")
        assert await w.reply() == err(-100)
        assert await w.ask("SOUR:VOLT?") == "12.5"
        # non-ASCII bytes are an unknown header, not a crash
        await w.send(b"\xff\xfe\n")
        assert await w.reply() == err(-100)
        # queries take no argument, commands without a value are a data type error
        assert await w.ask("*IDN? now") == err(-104)
        assert await w.ask("SOUR:VOLT") == err(-104)
        assert (await w.ask("SYST:ERR?")).startswith('-100,"')


async def test_every_command_through_the_driver(drv: EpgDriver, ctl: ControlClient) -> None:
    train = EpgTrain(amplitude_v=12.5, width_ms=0.25, period_ms=5, pulses=3, polarity="bip", current_limit_ma=30)
    await drv.configure(train)
    assert [await drv.query(q) for q in ("SOUR:VOLT?", "PULS:WIDT?", "PULS:PER?", "PULS:COUN?", "PULS:POL?", "CURR:LIM?")] == [
        "12.5", "0.25", "5", "3", "BIP", "30"]
    settings = (await ctl.state())["settings"]
    assert settings == {"amplitude_v": 12.5, "width_ms": 0.25, "period_ms": 5.0, "pulses": 3, "polarity": "bip",
                        "current_limit_ma": 30.0, "pulse_events": False}

    imp = await drv.measure_impedance()
    assert imp == pytest.approx(1000, rel=0.02)
    await drv.heartbeat()
    await drv.set_pulse_events(True)
    assert (await ctl.state())["settings"]["pulse_events"] is True

    st = await drv.status()
    assert (st.state, st.output_on, st.fault) == ("idle", False, None)
    async with drv.subscribe() as q:
        await drv.start()
        assert drv.energised
        assert (await drv.status()).state == "armed" and (await drv.status()).output_on
        await drv.trigger()
        done = await next_event(q, "train_done")
    assert done.data["pulses"] == 3
    assert not drv.energised
    rep = await drv.train_report()
    assert isinstance(rep, TrainReport) and rep.pulses == 3 and rep.peak_ma == pytest.approx(12.5)

    await drv.start()
    await drv.stop()
    assert not drv.energised
    assert (await ctl.state())["state"] == "idle"
    await drv.clear_fault()  # nothing latched: harmless

    assert await drv.query("SYST:ERR?") == '0,"No error"'
    await drv.reset()
    assert [await drv.query(q) for q in ("SOUR:VOLT?", "PULS:WIDT?", "PULS:PER?", "PULS:COUN?", "PULS:POL?", "CURR:LIM?")] == [
        "10", "1", "100", "10", "MONO", "20"]
    assert (await ctl.state())["settings"]["pulse_events"] is False


async def test_configure_orders_width_and_period_so_every_step_is_valid(drv: EpgDriver) -> None:
    await drv.configure(EpgTrain(amplitude_v=5, width_ms=20, period_ms=40, pulses=1))
    await drv.configure(EpgTrain(amplitude_v=5, width_ms=0.5, period_ms=1, pulses=1))  # period first would fail
    assert await drv.query("PULS:PER?") == "1"
    await drv.configure(EpgTrain(amplitude_v=5, width_ms=20, period_ms=2000, pulses=1))  # width first would fail
    assert await drv.query("PULS:WIDT?") == "20"


# ============================================================================ ranges


@pytest.mark.parametrize(
    ("line", "code"),
    [
        ("SOUR:VOLT 0.5", -222), ("SOUR:VOLT 150.5", -222), ("SOUR:VOLT 12.3", -224), ("SOUR:VOLT ten", -104),
        ("SOUR:VOLT nan", -104), ("SOUR:VOLT 1e400", -104),
        ("PULS:WIDT 0.04", -222), ("PULS:WIDT 20.5", -222), ("PULS:WIDT x", -104),
        ("PULS:PER 0.9", -222), ("PULS:PER 2001", -222), ("PULS:PER 1.5", -222),  # 1.5 < 2 x 1 ms
        ("PULS:COUN 0", -222), ("PULS:COUN 10001", -222), ("PULS:COUN 2.5", -224), ("PULS:COUN", -104),
        ("PULS:POL TRI", -224), ("PULS:POL", -104),
        ("CURR:LIM 0.9", -222), ("CURR:LIM 100.1", -222), ("CURR:LIM -5", -222),
        ("SYST:EVEN:PULS MAYBE", -224),
    ],
)
async def test_out_of_range_settings_are_refused_and_change_nothing(drv: EpgDriver, ctl: ControlClient, line: str, code: int) -> None:
    before = (await ctl.state())["settings"]
    assert await drv.query(line) == err(code)
    assert (await ctl.state())["settings"] == before
    assert await drv.query("SYST:ERR?") == f'{code},"{ERR_TEXT[code]}"'


async def test_range_edges_are_accepted(drv: EpgDriver) -> None:
    for line in ("SOUR:VOLT 1", "SOUR:VOLT 150", "SOUR:VOLT 149.5", "PULS:PER 2000", "PULS:WIDT 20",
                 "PULS:PER 40", "PULS:WIDT 0.05", "PULS:PER 1", "PULS:COUN 1", "PULS:COUN 10000",
                 "CURR:LIM 1", "CURR:LIM 100", "PULS:POL mono", "SYST:EVEN:PULS off"):
        assert await drv.query(line) == "OK", line


async def test_period_below_two_widths_is_refused_either_way(drv: EpgDriver) -> None:
    assert await drv.query("PULS:WIDT 10") == "OK"  # period 100 ms
    assert await drv.query("PULS:PER 19.9") == err(-222)
    assert await drv.query("PULS:PER 20") == "OK"
    assert await drv.query("PULS:WIDT 10.5") == err(-222)
    assert await drv.query("PULS:WIDT?") == "10"


def test_train_model_enforces_the_capability_ranges() -> None:
    EpgTrain(amplitude_v=150, width_ms=20, period_ms=40, pulses=10_000, polarity="bip", current_limit_ma=100)
    bad: list[dict[str, Any]] = [
        {"amplitude_v": 0.5}, {"amplitude_v": 150.5}, {"amplitude_v": 10.2}, {"width_ms": 0.01}, {"width_ms": 21},
        {"period_ms": 0.5}, {"period_ms": 2001}, {"period_ms": 1.5}, {"pulses": 0}, {"pulses": 10_001},
        {"polarity": "tri"}, {"current_limit_ma": 0}, {"current_limit_ma": 101}, {"amplitude_v": math.nan},
        {"extra": 1},
    ]
    for change in bad:
        with pytest.raises(pydantic.ValidationError):
            EpgTrain(**{"amplitude_v": 10, "width_ms": 1, "period_ms": 10, "pulses": 5, **change})


async def test_settings_are_refused_while_armed_and_running(drv: EpgDriver, ctl: ControlClient) -> None:
    await drv.configure(EpgTrain(amplitude_v=10, width_ms=1, period_ms=50, pulses=100))
    await drv.start()
    for line in ("SOUR:VOLT 20", "PULS:WIDT 2", "PULS:PER 10", "PULS:COUN 5", "PULS:POL BIP", "CURR:LIM 50"):
        assert await drv.query(line) == err(-222), line
    with pytest.raises(DeviceRefused) as info:
        await drv.configure(FAST)
    assert info.value.code == -222
    assert await drv.query("OUTP:ARM") == "OK"  # already armed
    await drv.trigger()
    await until(ctl, lambda s: s["state"] == "running")
    for line in ("SOUR:VOLT 20", "PULS:COUN 5", "MEAS:IMP?", "OUTP:ARM", "OUTP:TRIG"):
        assert await drv.query(line) == err(-222), line
    await drv.stop()
    state = await ctl.state()
    assert state["settings"]["amplitude_v"] == 10 and state["settings"]["pulses"] == 100
    assert (state["state"], state["output_on"]) == ("idle", False)
    assert await drv.query("OUTP:TRIG") == err(-222)  # not armed


async def test_error_queue_is_bounded_with_overflow_entry(drv: EpgDriver) -> None:
    for _ in range(20):
        assert (await drv.query("NOPE")).startswith("ERR -100")
    entries = [await drv.query("SYST:ERR?") for _ in range(17)]
    assert entries[:15] == ['-100,"Command error (unknown header)"'] * 15
    assert entries[15] == '-350,"Queue overflow"'
    assert entries[16] == '0,"No error"'


# ============================================================================ trains and physics


async def test_train_with_pulse_events_timing_and_report(drv: EpgDriver, ctl: ControlClient) -> None:
    n, period_ms = 25, 8.0
    before = await ctl.state()
    await drv.configure(EpgTrain(amplitude_v=10, width_ms=1, period_ms=period_ms, pulses=n))
    await drv.set_pulse_events(True)
    async with drv.subscribe() as q:
        await drv.start()
        await drv.trigger()
        pulses = [await next_event(q, "pulse") for _ in range(n)]
        done = await next_event(q, "train_done")
    assert [p.data["index"] for p in pulses] == list(range(1, n + 1))
    # offsets by the device's timer (ICD physics): ideal x (1 + ppm), within its 2 us jitter
    ppm = before["timer_ppm"]
    errors_us = [p.data["t_us"] - round((p.data["index"] - 1) * period_ms * 1000 * (1 + ppm * 1e-6)) for p in pulses]
    assert pulses[0].data["t_us"] >= 0 and max(abs(e) for e in errors_us) <= 2, errors_us
    assert all(p.data["peak_ma"] == pytest.approx(10.0) for p in pulses)  # 10 V into 1 kOhm

    rep = await drv.train_report()
    assert rep.pulses == done.data["pulses"] == n
    assert rep.charge_uc == pytest.approx(done.data["charge_uc"], abs=1e-6)
    assert rep.energy_mj == pytest.approx(done.data["energy_mj"], abs=1e-6)
    assert rep.charge_uc == pytest.approx(n * 10.0, rel=1e-6)  # 10 mA x 1 ms per pulse
    assert rep.energy_mj == pytest.approx(n * 0.1, rel=1e-6)  # 10 V x 10 mA x 1 ms
    after = await until(ctl, lambda s: s["state"] == "idle")
    assert after["pulses"] - before["pulses"] == rep.pulses
    assert after["charge_uC"] - before["charge_uC"] == pytest.approx(rep.charge_uc, abs=1e-5)
    assert after["energy_mJ"] - before["energy_mJ"] == pytest.approx(rep.energy_mj, abs=1e-5)
    assert not drv.energised


async def test_no_pulse_events_unless_enabled(drv: EpgDriver) -> None:
    await drv.configure(EpgTrain(amplitude_v=10, width_ms=1, period_ms=2, pulses=5))
    async with drv.subscribe() as q:
        await drv.start()
        await drv.trigger()
        await next_event(q, "train_done")
        seen = [q.get_nowait().kind for _ in range(q.qsize())]
    assert "pulse" not in seen


async def test_series_capacitance_and_biphasic_pulses(drv: EpgDriver, ctl: ControlClient) -> None:
    await ctl.set("load_uf", 1.0)  # tau = R C = 1 ms
    await drv.configure(EpgTrain(amplitude_v=10, width_ms=1, period_ms=3, pulses=4, polarity="bip"))
    await drv.set_pulse_events(True)
    async with drv.subscribe() as q:
        await drv.start()
        await drv.trigger()
        done = await next_event(q, "train_done")
    q_pulse = 1e-6 * 10 * (1 - math.exp(-1)) * 1e6  # C V (1 - e^-w/RC), in uC
    assert done.data["charge_uc"] == pytest.approx(4 * q_pulse, rel=1e-3)
    assert done.data["energy_mj"] == pytest.approx(4 * 10 * q_pulse * 1e-3, rel=1e-3)  # V x Q
    assert (await drv.train_report()).peak_ma == pytest.approx(10.0)


# ============================================================================ watchdog


async def test_watchdog_latches_when_the_host_falls_silent(sim: SimHandle, ctl: ControlClient) -> None:
    async with Wire(sim.endpoint) as w:
        assert await w.ask("OUTP:ARM") == "OK"
        armed = await ctl.state()
        assert armed["output_on"] is True
        assert await w.event("!FAULT", timeout=5.0) == '!FAULT -310,"Watchdog"'
        state = await ctl.state()
        assert (state["state"], state["fault"], state["output_on"]) == ("fault", -310, False)
        # by the device's own clock: not before 500 ms after the last line (ARM, stamped just after it)
        assert state["output_changed_at"] - armed["output_changed_at"] >= 0.5 - 0.001
        assert await w.ask("OUTP:STAT?") == "FAULT"
        assert await w.ask("OUTP:ARM") == err(-222)
        assert await w.ask("SYST:FAULT:CLR") == "OK"
        assert await w.ask("OUTP:STAT?") == "IDLE"


async def test_no_watchdog_while_the_driver_holds_it_armed(drv: EpgDriver, ctl: ControlClient) -> None:
    async with drv.subscribe() as q:
        await drv.start()
        t_end = time.monotonic() + 1.6
        while time.monotonic() < t_end:  # watch for 1.6 s: armed throughout, no fault
            state = await ctl.state()
            assert (state["state"], state["fault"], state["output_on"]) == ("armed", None, True)
            await asyncio.sleep(0.1)
        assert not any(q.get_nowait().kind in ("fault", "heartbeat_failed") for _ in range(q.qsize()))
    await drv.stop()
    assert (await ctl.state())["state"] == "idle"


async def test_no_watchdog_in_idle(sim: SimHandle, ctl: ControlClient) -> None:
    async with Wire(sim.endpoint) as w:
        assert await w.ask("OUTP:STAT?") == "IDLE"
        with pytest.raises(asyncio.TimeoutError):
            await w.event("!FAULT", timeout=0.7)
    assert (await ctl.state())["state"] == "idle"


# ============================================================================ faults


async def _arm_and_trigger(drv: EpgDriver) -> None:
    await drv.configure(FAST)
    await drv.start()
    await drv.trigger()


async def test_overcurrent_aborts_the_train(drv: EpgDriver, ctl: ControlClient) -> None:
    await ctl.inject("overcurrent")
    async with drv.subscribe() as q:
        await _arm_and_trigger(drv)
        ev = await next_event(q, "fault")
    assert ev.data == {"code": -301, "text": "Overcurrent"}
    assert not drv.energised
    st = await drv.status()
    assert (st.state, st.output_on, st.fault, st.fault_text) == ("fault", False, -301, "Overcurrent")
    assert (await drv.status()).fault == -301  # still known once the queue is read
    state = await ctl.state()
    assert (state["output_on"], state["fault"]) == (False, -301)
    with pytest.raises(DeviceRefused) as info:
        await drv.clear_fault()  # the short is still there
    assert info.value.code == -222
    await ctl.clear("overcurrent")
    await drv.clear_fault()
    assert (await drv.status()).state == "idle"


async def test_overcurrent_from_a_low_load(drv: EpgDriver, ctl: ControlClient) -> None:
    await ctl.set("load_ohm", 100)  # 10 V / 100 ohm = 100 mA > 20 mA
    async with drv.subscribe() as q:
        await _arm_and_trigger(drv)
        assert (await next_event(q, "fault")).data["code"] == -301
    rep = await drv.train_report()
    assert rep.pulses == 0 and rep.peak_ma == pytest.approx(100.0)


async def test_open_circuit(drv: EpgDriver, ctl: ControlClient) -> None:
    await ctl.inject("open_circuit")
    assert await drv.measure_impedance() > 20_000
    async with drv.subscribe() as q:
        await _arm_and_trigger(drv)
        ev = await next_event(q, "fault")
    assert ev.data == {"code": -302, "text": "Open circuit (impedance above 20 kOhm)"}
    st = await drv.status()
    assert (st.state, st.fault, st.output_on) == ("fault", -302, False)
    with pytest.raises(DeviceRefused):
        await drv.clear_fault()
    await ctl.clear()
    await drv.clear_fault()
    assert await drv.measure_impedance() == pytest.approx(1000, rel=0.02)


async def test_open_circuit_from_a_high_load(drv: EpgDriver, ctl: ControlClient) -> None:
    await ctl.set("load_ohm", 50_000)
    assert await drv.measure_impedance() == pytest.approx(50_000, rel=0.02)
    async with drv.subscribe() as q:
        await _arm_and_trigger(drv)
        assert (await next_event(q, "fault")).data["code"] == -302


async def test_over_temperature_latches_in_any_state(drv: EpgDriver, ctl: ControlClient) -> None:
    async with drv.subscribe() as q:
        await drv.start()
        await ctl.inject("over_temperature")
        ev = await next_event(q, "fault")
    assert ev.data == {"code": -303, "text": "Over temperature"}
    assert not drv.energised
    st = await drv.status()
    assert (st.state, st.fault, st.output_on) == ("fault", -303, False)
    assert (await ctl.state())["output_on"] is False
    with pytest.raises(DeviceRefused):
        await drv.clear_fault()
    await ctl.clear("over_temperature")
    await drv.clear_fault()
    async with drv.subscribe() as q:
        await ctl.set("temperature_c", 70)  # the physical input, in IDLE
        assert (await next_event(q, "fault")).data["code"] == -303
    await ctl.set("temperature_c", 25)
    await drv.clear_fault()
    assert (await drv.status()).state == "idle"


async def test_stall_the_watchdog_still_turns_the_output_off(drv: EpgDriver, ctl: ControlClient) -> None:
    async with drv.subscribe() as q:
        await drv.start()
        await ctl.inject("stall")
        failed = await next_event(q, "heartbeat_failed", timeout=2.0)
        assert "no reply" in failed.data["error"]
        state = await until(ctl, lambda s: s["fault"] == -310, timeout=2.0)
        assert (state["state"], state["output_on"]) == ("fault", False)
        with pytest.raises(DeviceTimeout):
            await drv.identify()
    await ctl.clear("stall")
    st = await drv.status()
    assert (st.state, st.fault, st.output_on) == ("fault", -310, False)
    await drv.clear_fault()
    assert not drv.energised
    assert (await drv.status()).state == "idle"


async def test_garbage_reply_then_recovery(drv: EpgDriver, ctl: ControlClient) -> None:
    assert await drv.query("SOUR:VOLT?") == "10"
    await ctl.inject("garbage")
    with pytest.raises(ProtocolError):
        await drv.identify()
    assert (await ctl.state())["injected"] == {}
    assert await drv.query("PULS:COUN?") == "10"
    assert (await drv.identify()).serial == "SIM00001"
    # three garbled lines in a row: requests fail with typed errors (a garbled probe shows as
    # a timeout) until the noise is over, then the link is in step again
    await ctl.inject("garbage", count=3)
    for _ in range(4):
        if not (await ctl.state())["injected"]:
            break
        with pytest.raises((ProtocolError, DeviceTimeout)):
            await drv.query("CURR:LIM?")
    assert (await ctl.state())["injected"] == {}
    assert await drv.query("CURR:LIM?") == "20"
    assert await drv.query("PULS:POL?") == "MONO"


async def test_garbage_on_the_wire_is_noise_not_an_event(sim: SimHandle, ctl: ControlClient) -> None:
    await ctl.inject("garbage")
    async with Wire(sim.endpoint) as w:
        await w.send(b"*IDN?\n")
        assert w._reader is not None
        raw = await asyncio.wait_for(w._reader.readline(), 1.0)
        assert raw.endswith(b"\n") and not raw.startswith(b"!") and raw != IDN.encode() + b"\n"
        assert any(b > 0x7E for b in raw)
        assert await w.ask("*IDN?") == IDN


async def test_dropped_reply_then_recovery(drv: EpgDriver, ctl: ControlClient) -> None:
    assert await drv.query("PULS:COUN?") == "10"
    await ctl.inject("drop_reply")
    t0 = time.monotonic()
    with pytest.raises(DeviceTimeout):
        await drv.query("SOUR:VOLT 20")
    assert time.monotonic() - t0 >= 0.25  # the ICD's reply timeout, never less (a lower bound: load cannot break it)
    assert await drv.query("SOUR:VOLT?") == "20"  # the command itself was executed
    assert await drv.query("PULS:COUN?") == "10"


async def _late_replying_device(delays: dict[str, list[float]], received: asyncio.Queue[str] | None = None
                                ) -> tuple[asyncio.AbstractServer, str]:
    """A stand-in EPG-1 that answers in order but slowly to some lines (a sluggish unit).

    ``delays`` maps a line to the delays of its successive occurrences (then none);
    every line received is also put in ``received``, if given.
    """
    answers = {"*IDN?": IDN, "SOUR:VOLT?": "10", "CURR:LIM?": "20", "PULS:POL?": "MONO", "OUTP:STOP": "OK",
               "OUTP:STAT?": "IDLE", "TRAIN:REP?": "0,0,0,0"}

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := (await reader.readline()).decode().strip():
                if line == "BYE":
                    break
                if received is not None:
                    received.put_nowait(line)
                pending = delays.get(line)
                if pending:
                    await asyncio.sleep(pending.pop(0))
                writer.write(answers.get(line, 'ERR -100,"Command error (unknown header)"').encode() + b"\n")
        except (asyncio.CancelledError, ConnectionError):
            pass  # the test is over
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, f"socket://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def test_a_late_reply_is_never_taken_for_the_next_request() -> None:
    server, endpoint = await _late_replying_device({"SOUR:VOLT?": [0.4]})
    async with server, EpgDriver(endpoint) as driver:
        with pytest.raises(DeviceTimeout):
            await driver.query("SOUR:VOLT?")
        assert await driver.query("CURR:LIM?") == "20"  # not the late "10"
        assert await driver.query("PULS:POL?") == "MONO"
    # identify asks once more when its reply is late: both asks late
    server_late_idn, endpoint2 = await _late_replying_device({"*IDN?": [0, 0.4, 0.4]})
    async with server_late_idn, EpgDriver(endpoint2) as driver:
        await driver.query("CURR:LIM?")
        with pytest.raises(DeviceTimeout):
            await driver.identify()
        # the owed reply is an identity: the driver must probe with something else
        assert await driver.query("SOUR:VOLT?") == "10"
        assert (await driver.identify()).model == "EPG-1"


async def test_connection_lost() -> None:
    server, endpoint = await _late_replying_device({})
    async with server:
        driver = EpgDriver(endpoint)
        await driver.connect()
        async with driver.subscribe() as q:
            assert await driver.query("CURR:LIM?") == "20"
            with pytest.raises(NotConnected):
                await driver.query("BYE")
            await next_event(q, "connection_lost")
        assert not driver.connected
        with pytest.raises(NotConnected):
            await driver.identify()
        result = await driver.safe_state()
        assert not result.confirmed
        await driver.close()


# ============================================================================ safe state


async def test_safe_state_from_every_state(drv: EpgDriver, ctl: ControlClient) -> None:
    # IDLE, and idempotent
    for _ in range(2):
        t0 = time.monotonic()
        r = await drv.safe_state()
        assert r.confirmed and r.detail == "idle" and 0 < r.ms <= (time.monotonic() - t0) * 1000
    # ARMED
    await drv.configure(EpgTrain(amplitude_v=10, width_ms=1, period_ms=10, pulses=1000))
    await drv.start()
    r = await drv.safe_state()
    assert r.confirmed and not drv.energised
    assert (await ctl.state())["output_on"] is False
    # RUNNING: the train stops (configured anew: a start after a safe state needs its configure)
    await drv.configure(EpgTrain(amplitude_v=10, width_ms=1, period_ms=10, pulses=1000))
    await drv.start()
    await drv.trigger()
    await until(ctl, lambda s: s["state"] == "running" and s["last_train"]["pulses"] >= 1)
    r = await drv.safe_state()
    assert r.confirmed and r.detail == "idle"
    state = await ctl.state()
    assert (state["state"], state["output_on"]) == ("idle", False)
    delivered = state["pulses"]
    # no pulse of the stopped train may follow: a next train of 2 adds exactly 2
    await drv.configure(EpgTrain(amplitude_v=10, width_ms=1, period_ms=2, pulses=2))
    async with drv.subscribe() as q:
        await drv.start()
        await drv.trigger()
        assert (await next_event(q, "train_done")).data["pulses"] == 2
    assert (await ctl.state())["pulses"] == delivered + 2
    await drv.configure(EpgTrain(amplitude_v=10, width_ms=1, period_ms=10, pulses=1000))
    # FAULT
    await ctl.inject("over_temperature")
    await until(ctl, lambda s: s["state"] == "fault")
    r = await drv.safe_state()
    assert r.confirmed and r.detail == "fault"
    assert (await drv.safe_state()).confirmed
    # the link is in step afterwards
    assert await drv.query("PULS:COUN?") == "1000"


async def test_safe_state_against_a_stalled_device(drv: EpgDriver, ctl: ControlClient) -> None:
    await drv.start()
    await ctl.inject("stall")
    stuck = asyncio.create_task(drv.query("OUTP:STAT?"))  # a request that will never be answered
    await asyncio.sleep(0)  # it runs up to its wait for the reply (no time passes)
    t0 = time.monotonic()
    r = await drv.safe_state()
    took = time.monotonic() - t0
    assert not r.confirmed and 0 < r.ms <= took * 1000
    with pytest.raises(DeviceTimeout):
        await stuck
    assert not drv.energised
    assert (await until(ctl, lambda s: s["fault"] == -310))["output_on"] is False  # the watchdog did it
    await ctl.clear("stall")
    r = await drv.safe_state()
    assert r.confirmed and r.detail == "fault"


async def test_safe_state_preempts_a_request_in_flight(drv: EpgDriver, ctl: ControlClient) -> None:
    await drv.start()
    pending = asyncio.create_task(drv.measure_impedance())  # ~5 ms on the device
    await asyncio.sleep(0)
    results = await asyncio.gather(drv.safe_state(), drv.safe_state())  # concurrent callers share one
    assert all(r.confirmed for r in results)
    try:
        assert await pending == pytest.approx(1000, rel=0.02)
    except DeviceTimeout:
        pass  # preempted: allowed
    assert (await ctl.state())["output_on"] is False
    assert await drv.query("SOUR:VOLT?") == "10"
    assert (await drv.identify()).model == "EPG-1"


async def test_safe_state_with_a_sluggish_device_in_flight() -> None:
    received: asyncio.Queue[str] = asyncio.Queue()
    server, endpoint = await _late_replying_device({"SOUR:VOLT?": [0.1]}, received)
    async with server, EpgDriver(endpoint) as driver:
        pending = asyncio.create_task(driver.query("SOUR:VOLT?"))
        while await asyncio.wait_for(received.get(), 5.0) != "SOUR:VOLT?":
            pass  # the device has the query in hand (the driver may resynchronise first)
        t0 = time.monotonic()
        r = await driver.safe_state()
        assert r.confirmed and 0 < r.ms <= (time.monotonic() - t0) * 1000
        with pytest.raises(DeviceTimeout):
            await pending
        assert await driver.query("CURR:LIM?") == "20"


# ============================================================================ pty


async def test_over_a_pseudo_terminal() -> None:
    async with run_simulator("epg", pty=True) as handle:
        assert handle.endpoint.startswith("/dev/")
        async with EpgDriver(handle.endpoint) as driver, handle.client() as client:
            assert (await driver.identify()).model == "EPG-1"
            await driver.configure(EpgTrain(amplitude_v=20, width_ms=0.5, period_ms=5, pulses=5))
            await driver.set_pulse_events(True)
            async with driver.subscribe() as q:
                await driver.start()
                await driver.trigger()
                assert [(await next_event(q, "pulse")).data["index"] for _ in range(5)] == [1, 2, 3, 4, 5]
                done = await next_event(q, "train_done")
            assert done.data["charge_uc"] == pytest.approx(5 * 20 * 0.5, rel=1e-6)  # 20 mA x 0.5 ms
            assert (await client.state())["pulses"] == 5
            await client.inject("drop_reply", count=2)  # the heartbeat's reply, and its second's
            with pytest.raises(DeviceTimeout):
                await driver.heartbeat()
            assert (await driver.safe_state()).confirmed


# ============================================================================ control channel


async def test_bad_control_requests_change_nothing(ctl: ControlClient) -> None:
    before = await ctl.state()
    bad: list[dict[str, Any] | bytes] = [
        b"not json", b"[1, 2]", {"nop": 1}, {"op": 3}, {"op": "explode"},
        {"op": "inject", "fault": "fire"}, {"op": "inject"}, {"op": "inject", "fault": "stall", "count": 0},
        {"op": "inject", "fault": "stall", "count": "1"}, {"op": "inject", "fault": "garbage", "count": -2},
        {"op": "clear", "fault": "fire"},
        {"op": "set", "name": "colour", "value": 1}, {"op": "set", "name": "load_ohm", "value": "1k"},
        {"op": "set", "name": "load_ohm", "value": True}, {"op": "set", "name": "load_ohm", "value": 0},
        {"op": "set", "name": "load_ohm", "value": 1e9}, {"op": "set", "name": "temperature_c"},
        {"op": "trigger"}, {"op": "auto_trigger", "rate_hz": 1},
    ]
    for req in bad:
        reply = await ctl.request(req)
        assert reply["ok"] is False and isinstance(reply["error"], str) and reply["error"], req
    after = await ctl.state()
    assert after == before
    json.dumps(after)  # strictly JSON (no Infinity)
    assert (await ctl.set("load_ohm", 2000))["ok"] is True
    assert (await ctl.state())["load_ohm"] == 2000


async def test_no_train_is_armed_or_fired_after_a_safe_state_that_came_since_its_configure(
        drv: EpgDriver, ctl: ControlClient) -> None:
    """The 01:15 soak hour's #597 showed a step outliving a stop and starting its device
    afterwards (an LED there). An EP step between its configure and OUTP:ARM when a stop
    comes must not arm or fire after the stop: the safe state voids that configure."""
    from drivers.base import Preempted

    await drv.configure(FAST)
    before = (await ctl.state())["pulses"]
    assert (await drv.safe_state()).confirmed
    with pytest.raises(Preempted):
        await drv.start()
    with pytest.raises(Preempted):
        await drv.trigger()
    state = await ctl.state()
    assert (state["state"], state["output_on"], state["pulses"]) == ("idle", False, before)
    await drv.configure(FAST)  # a train configured after the stop runs
    await drv.start()
    await drv.trigger()
    await until(ctl, lambda s: s["pulses"] > before)
    await drv.safe_state()
