"""The shipped broker configuration (configs/mosquitto) enforces who may say what.

A real Mosquitto runs configs/mosquitto/mosquitto.conf (listener, paths and logging
moved to a temp dir) with the shipped acl and a password file made by
configs/mosquitto/make-passwords.sh.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import aiomqtt
import pytest

from simulators.local_broker import free_port, mosquitto_binary
from devicehub.mqtt.frontend import MqttFrontend
from devicehub.mqtt.idempotency import IdempotencyStore
from devicehub.mqtt.outbox import Outbox

from . import Requester, StubRoom, observing, running

ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = ROOT / "configs" / "mosquitto"
PASSWORDS = {"hub-clinic-a-room-1": "hub-one-pw", "hub-clinic-a-room-2": "hub-two-pw", "clinic-app": "clinic-pw"}
R1 = "devicehub/v1/clinic-a/room-1"
R2 = "devicehub/v1/clinic-a/room-2"


class SecuredBroker:
    """Mosquitto on the shipped configuration; ``host``/``port`` like LocalBroker."""

    def __init__(self, workdir: Path) -> None:
        self.host = "127.0.0.1"
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        conf = (CONF_DIR / "mosquitto.conf").read_text()
        replacements = {
            r"^listener 1883 127\.0\.0\.1$": f"listener {self.port} 127.0.0.1",
            r"^password_file .*$": f"password_file {self.workdir}/passwords",
            r"^acl_file .*$": f"acl_file {self.workdir}/acl",
            r"^persistence_location .*$": f"persistence_location {self.workdir}/",
        }
        for pattern, new in replacements.items():
            conf, n = re.subn(pattern, new, conf, flags=re.M)
            assert n == 1, f"the shipped mosquitto.conf has no line matching {pattern}"
        (self.workdir / "mosquitto.conf").write_text(conf)
        shutil.copy(CONF_DIR / "acl", self.workdir / "acl")
        os.chmod(self.workdir / "acl", 0o644)
        log = self.workdir / "mosquitto.log"  # a file, not a pipe nobody reads (see test_local_broker.py)
        with log.open("ab") as fh:
            self.proc = subprocess.Popen([mosquitto_binary(), "-c", str(self.workdir / "mosquitto.conf")],
                                         stdout=subprocess.DEVNULL, stderr=fh)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {log.read_text(errors='replace')[-4000:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("secured mosquitto did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)


@pytest.fixture(scope="module")
def secured():
    workdir = Path(tempfile.mkdtemp(prefix="devicehub-secured-"))
    os.chmod(workdir, 0o777)  # mosquitto reads and writes here after dropping root privileges
    env = {**os.environ, "DEVICEHUB_MQTT_USERS": " ".join(PASSWORDS) + " generated-user"}
    for user, password in PASSWORDS.items():
        env["DEVICEHUB_MQTT_PASSWORD_" + user.upper().replace("-", "_")] = password
    subprocess.run(["bash", str(CONF_DIR / "make-passwords.sh"), str(workdir)], env=env, check=True,
                   capture_output=True)
    broker = SecuredBroker(workdir)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def test_password_script_hashes_and_generates(secured):
    lines = (secured.workdir / "passwords").read_text().splitlines()
    assert [line.split(":", 1)[0] for line in lines] == [*PASSWORDS, "generated-user"]
    assert all(line.split(":", 1)[1].startswith("$7$") for line in lines)  # hashed, never plain
    assert not any(pw in "\n".join(lines) for pw in PASSWORDS.values())
    creds = secured.workdir / "credentials"
    assert creds.read_text().startswith("generated-user:") and len(creds.read_text().splitlines()) == 1
    assert creds.stat().st_mode & 0o777 == 0o600


async def test_anonymous_and_wrong_passwords_are_refused(secured):
    for kwargs in ({}, {"username": "clinic-app", "password": "wrong"}, {"username": "nobody", "password": "x"}):
        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client(secured.host, secured.port, protocol=aiomqtt.ProtocolVersion.V5, **kwargs):
                pass
    async with aiomqtt.Client(secured.host, secured.port, username="clinic-app", password="clinic-pw"):
        pass


def as_user(user: str) -> dict:
    return {"username": user, "password": PASSWORDS[user]}


async def test_clinic_cannot_publish_hub_topics(secured):
    async with observing(secured, "devicehub/v1/#", **as_user("clinic-app")) as watcher, \
            observing(secured, **as_user("clinic-app")) as clinic:
        for topic in (f"{R1}/status", f"{R1}/sessions/S1/events", f"{R1}/devices/epg-1/state", f"{R1}/alarms",
                      f"{R1}/session", f"{R1}/reply/someone"):
            await clinic.client.publish(topic, b'{"forged": true}', qos=1)
        await clinic.client.publish(f"{R1}/cmd/status", b'{"request_id": "marker"}', qos=1)  # allowed
        await watcher.wait_for(lambda s: s.topic == f"{R1}/cmd/status")
        assert [s.topic for s in watcher.seen] == [f"{R1}/cmd/status"]


async def test_hub_cannot_publish_in_another_rooms_tree_nor_its_own_cmd(secured):
    async with observing(secured, "devicehub/v1/#", **as_user("clinic-app")) as watcher, \
            observing(secured, **as_user("hub-clinic-a-room-1")) as hub:
        for topic in (f"{R2}/status", f"{R2}/sessions/S1/events", f"{R2}/cmd/abort", f"{R2}/reply/app",
                      f"{R1}/cmd/start", "devicehub/v1/clinic-b/room-1/status", "elsewhere"):
            await hub.client.publish(topic, b'{"forged": true}', qos=1)
        await hub.client.publish(f"{R1}/alarms", b"[]", qos=1)  # allowed
        await watcher.wait_for(lambda s: s.topic == f"{R1}/alarms")
        assert [s.topic for s in watcher.seen] == [f"{R1}/alarms"]


async def test_hub_reads_only_its_own_commands(secured):
    async with observing(secured, "devicehub/v1/#", "#", **as_user("hub-clinic-a-room-1")) as hub, \
            observing(secured, **as_user("clinic-app")) as clinic, \
            observing(secured, **as_user("hub-clinic-a-room-2")) as hub2:
        await hub2.client.publish(f"{R2}/status", b'{"other": "room"}', qos=1)
        await clinic.client.publish(f"{R2}/cmd/start", b'{"request_id": "for-room-2"}', qos=1)
        await clinic.client.publish(f"{R1}/cmd/status", b'{"request_id": "for-room-1"}', qos=1)
        await hub.wait_for(lambda s: s.topic == f"{R1}/cmd/status")
        # the other room's messages went through the broker before this one (the same
        # clinic connection, and hub2's publish was acknowledged first), so had the ACL let
        # them through they would be here already. Two overlapping subscriptions may each
        # deliver a copy (Mosquitto sends one per matching subscription; under load the
        # second is read before this check): what counts is which topics came
        assert {s.topic for s in hub.seen} == {f"{R1}/cmd/status"}


async def test_the_hub_works_under_the_shipped_acl(secured, tmp_path):
    room = StubRoom()
    fe = MqttFrontend(room, site="clinic-a", room_id="room-1", boot=3, host=secured.host, port=secured.port,
                      **as_user("hub-clinic-a-room-1"), outbox=Outbox(tmp_path / "o.sqlite"),
                      idempotency=IdempotencyStore(tmp_path / "r.sqlite"), reconnect_min_s=0.05)
    async with observing(secured, f"{R1}/#", **as_user("clinic-app")) as clinic, running(fe):
        birth = await clinic.wait_for(lambda s: s.topic == f"{R1}/status")
        assert birth.json["data"]["state"] == "online"
        room.device_state("epg-1", "idle")
        await clinic.wait_for(lambda s: s.topic == f"{R1}/devices/epg-1/state")
        rep = await Requester(clinic, R1, "clinic-app").request("programs", {"request_id": "acl-ok"})
        assert rep["ok"] and rep["data"] == StubRoom.PROGRAMS
    async with observing(secured, f"{R1}/status", **as_user("clinic-app")) as late:
        assert json.loads((await late.wait_for(lambda s: True)).payload)["data"]["state"] == "offline"
