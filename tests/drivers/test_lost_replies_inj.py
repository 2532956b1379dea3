"""INJ-1: a write whose reply is lost (the gun did it; only the reply never came back) is
settled by STATUS, as the ICD asks for ARM: taken as done, sent once more when that
cannot deliver more than planned, or the error stands.

While the gun is idle nothing else talks, so the simulator's own ``drop_reply`` loses
the write's reply. While it is armed the driver's heartbeat runs, so a dropper on the
wire loses the reply to the one chosen command. The simulator counts the requests it
received per command (control ``state``, ``requests``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from drivers.base import DeviceTimeout
from drivers.inj import InjDriver, InjParams
from drivers.inj_frames import Cmd
from simulators.control import ControlClient
from simulators.devsupport.proxy import InjReplyDropper
from simulators.harness import SimHandle, run_simulator
from tests.drivers.waiting import next_event

pytestmark = pytest.mark.timeout(30)

PARAMS = InjParams(volume_ul=15.0, depth_mm=1.2, mode="single", rate_hz=3)


@pytest.fixture
async def sim() -> AsyncIterator[SimHandle]:
    async with run_simulator("inj", seed=7) as h:
        yield h


@pytest.fixture
async def ctl(sim: SimHandle) -> AsyncIterator[ControlClient]:
    async with sim.client() as c:
        yield c


@pytest.fixture
async def inj(sim: SimHandle) -> AsyncIterator[InjDriver]:
    d = InjDriver(sim.endpoint)
    await d.connect()
    yield d
    await d.close()


@pytest.fixture
async def wire(sim: SimHandle) -> AsyncIterator[tuple[InjDriver, InjReplyDropper]]:
    host, port = sim.endpoint.rsplit(":", 1)
    async with InjReplyDropper(int(port)) as dropper:
        d = InjDriver(f"{host.rsplit('/', 1)[0]}/127.0.0.1:{dropper.port}")
        await d.connect()
        yield d, dropper
        await d.close()


async def requests(ctl: ControlClient) -> dict[str, int]:
    return dict((await ctl.state())["requests"])


# --------------------------------------------------------------------------- SET_PARAMS


async def test_set_params_whose_reply_is_lost_is_confirmed_by_status(inj, ctl):
    await inj.configure(PARAMS)
    before = await requests(ctl)
    await ctl.inject("drop_reply")
    deeper = PARAMS.model_copy(update={"volume_ul": 20.5, "depth_mm": 2.5})
    await inj.configure(deeper)  # STATUS: idle, with the volume and depth sent
    st = await ctl.state()
    assert st["injected"] == {}
    assert (st["volume_set_ul"], st["depth_set_mm"], st["mode"]) == (20.5, 2.5, "single")
    assert st["requests"]["SET_PARAMS"] == before["SET_PARAMS"] + 1  # sent once
    assert st["requests"]["GET_STATUS"] == before.get("GET_STATUS", 0) + 1
    assert inj.params == deeper


async def test_set_params_lost_with_a_mode_status_cannot_show_is_sent_once_more(inj, ctl):
    # STATUS shows volume and depth, not the mode: a change of mode alone is sent again
    await inj.configure(PARAMS)
    before = await requests(ctl)
    await ctl.inject("drop_reply")
    await inj.configure(PARAMS.model_copy(update={"mode": "burst", "rate_hz": 5}))
    st = await ctl.state()
    assert (st["mode"], st["rate"], st["volume_set_ul"]) == ("burst", 5, 15.0)
    assert st["requests"]["SET_PARAMS"] == before["SET_PARAMS"] + 2


# --------------------------------------------------------------------------- SET_CAP


async def test_set_cap_lost_while_idle_is_sent_once_more(inj, ctl):
    await ctl.inject("drop_reply")
    await inj.set_cap(42.5)
    st = await ctl.state()
    assert (st["injected"], st["cap_ul"]) == ({}, 42.5)
    assert st["requests"]["SET_CAP"] == 2 and st["requests"]["GET_STATUS"] == 1


async def test_set_cap_lost_while_armed_is_not_sent_again(wire, ctl):
    inj, dropper = wire
    await inj.configure(PARAMS)
    await inj.set_cap(15.0)
    await inj.start()
    before = await requests(ctl)
    dropped = dropper.drop_reply(Cmd.SET_CAP)
    with pytest.raises(DeviceTimeout):
        await inj.set_cap(30.0)  # a shot may have used part of it: never sent twice
    assert dropped.is_set()
    st = await ctl.state()
    assert st["cap_ul"] == 30.0 and st["requests"]["SET_CAP"] == before["SET_CAP"] + 1
    assert st["requests"]["GET_STATUS"] == before.get("GET_STATUS", 0) + 1  # STATUS was read first
    # a cap of 0 allows nothing: sent once more whatever the state
    dropped = dropper.drop_reply(Cmd.SET_CAP)
    await inj.set_cap(0.0)
    assert dropped.is_set()
    st = await ctl.state()
    assert (st["cap_ul"], st["state"]) == (0.0, "armed")
    assert st["requests"]["SET_CAP"] == before["SET_CAP"] + 3
    await inj.stop()


# --------------------------------------------------------------------------- CLEAR_FAULT


async def test_clear_fault_whose_reply_is_lost_is_confirmed_by_status(inj, ctl):
    await inj.configure(PARAMS)
    await inj.set_cap(15.0)
    async with inj.subscribe() as q:
        await inj.start()
        await ctl.inject("occlusion", count=-1)  # at once when armed: fault 6
        assert (await next_event(q, "fault")).data["code"] == 6
    assert (await inj.status()).state == "fault"  # behind any heartbeat in flight; none after it
    await ctl.clear("occlusion")
    await ctl.inject("drop_reply")
    await inj.clear_fault()
    st = await ctl.state()
    assert (st["injected"], st["state"], st["fault"]) == ({}, "idle", 0)
    assert st["requests"]["CLEAR_FAULT"] == 1
