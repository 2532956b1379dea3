"""A private Mosquitto broker on a free loopback port, for the demo and the tests.

Never a mock: the Debian ``mosquitto`` binary, with ``set_tcp_nodelay true`` (see
shared/measured.md) and a queue deep enough for clinic consumers.

Its log goes to ``log_path``, a file in its own directory, never to a pipe: a pipe that
nobody reads fills at 64 KiB and then mosquitto stops in the middle of a write, serving
no one (a long test's warnings, a bridge that cannot connect, ``log_type all``).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mosquitto_binary() -> str:
    path = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if path is None:
        raise RuntimeError("mosquitto is not installed (apt-get install mosquitto; `make test` does it)")
    return path


class LocalBroker:
    """``with LocalBroker() as b: ... b.port``; ``extra_conf`` adds lines (ACLs, passwords)."""

    def __init__(self, port: int | None = None, extra_conf: str = "", allow_anonymous: bool = True,
                 log_path: Path | None = None) -> None:
        self.port = port or free_port()
        self._keep_log = log_path  # given: the log outlives the broker and its restarts (appended)
        self.host = "127.0.0.1"
        self.extra_conf = extra_conf
        self.allow_anonymous = allow_anonymous
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = log_path

    def log_tail(self, limit: int = 4000) -> str:
        """The end of mosquitto's log (what it said before it exited, for an error)."""
        try:
            return self.log_path.read_text(errors="replace")[-limit:] if self.log_path else ""
        except OSError:
            return ""

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> "LocalBroker":
        self._dir = tempfile.TemporaryDirectory(prefix="devicehub-broker-")
        conf = Path(self._dir.name) / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            f"allow_anonymous {'true' if self.allow_anonymous else 'false'}\n"
            "set_tcp_nodelay true\n"
            "persistence false\n"
            "max_queued_messages 100000\n"
            "log_dest stderr\n"
            "log_type error\n"
            "log_type warning\n" + self.extra_conf
        )
        self.log_path = self._keep_log or Path(self._dir.name) / "mosquitto.log"
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen([mosquitto_binary(), "-c", str(conf)], stdout=subprocess.DEVNULL,
                                         stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.log_tail()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError("mosquitto did not start listening")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def restart(self, timeout: float = 10.0) -> None:
        """Stop and start again on the same port (a broker outage)."""
        self.stop()
        self.start(timeout)

    def __enter__(self) -> "LocalBroker":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
