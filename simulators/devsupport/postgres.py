"""A private PostgreSQL for the tests and the benchmarks: initdb and pg_ctl on a free port in a temp dir.

Found on PATH or in /usr/lib/postgresql/*/bin (``make test`` installs Debian's
postgresql when pg_ctl is missing). PostgreSQL refuses to run as root: as root the
server runs as the ``postgres`` user (else ``nobody``) through ``runuser``.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from simulators.local_broker import free_port


def pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True):
        return candidate
    raise RuntimeError(f"{name} not found (apt-get install postgresql; `make test` does it)")


class PrivatePostgres:
    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="devicehub-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self._user: str | None = None
        if os.geteuid() == 0:
            for name in ("postgres", "nobody"):
                try:
                    pw = pwd.getpwnam(name)
                except KeyError:
                    continue
                self._user = name
                os.chown(self.dir, pw.pw_uid, pw.pw_gid)
                break
        self.url = f"postgresql://devicehub@127.0.0.1:{self.port}/devicehub"

    def _run(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd = list(args)
        if self._user is not None:
            cmd = ["runuser", "-u", self._user, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=timeout)

    def init(self) -> "PrivatePostgres":
        self._run(pg_bin("initdb"), "-D", str(self.data), "-U", "devicehub", "--auth=trust", "-E", "UTF8",
                  "--no-sync")
        self.start()
        self._run(pg_bin("createdb") if shutil.which("createdb") or glob.glob("/usr/lib/postgresql/*/bin/createdb")
                  else "createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "devicehub", "devicehub")
        return self

    def start(self) -> None:
        opts = (f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.dir}"
                " -c fsync=off -c synchronous_commit=on -c max_connections=60")
        self._run(pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", opts, "-w", "-t", "30",
                  "start")

    def stop(self, mode: str = "fast") -> None:
        """``fast``: clients are disconnected, nothing acknowledged is lost; ``immediate``: a crash."""
        self._run(pg_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop", check=False)

    def running(self) -> bool:
        return self._run(pg_bin("pg_ctl"), "-D", str(self.data), "status", check=False).returncode == 0

    def destroy(self) -> None:
        try:
            if self.data.exists():
                self.stop("immediate")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
