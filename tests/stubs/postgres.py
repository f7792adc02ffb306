"""A throwaway PostgreSQL server for the store's tests: a fresh cluster in a temp directory on a
free loopback port, trust auth, stopped and deleted afterwards.

Uses the Debian server binaries (`apt-get install postgresql`; `.ci/run` installs them). As root
it runs the server as the `postgres` user (initdb refuses root). `SESAME_TEST_POSTGRES_URL`
points the tests at an existing server instead.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time


def server_binaries() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return os.path.dirname(found[-1]) if found else None


class Postgres:
    def __init__(self) -> None:
        bin_dir = server_binaries()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL server binaries not found: apt-get install postgresql")
        self._bin = bin_dir
        self._dir = tempfile.mkdtemp(prefix="sesame-pg-")
        self._data = os.path.join(self._dir, "data")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *command: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run(prefix + list(command), check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, timeout=60)

    def start(self) -> "Postgres":
        if os.geteuid() == 0:
            shutil.chown(self._dir, "postgres")
        self._run(f"{self._bin}/initdb", "-D", self._data, "-U", "postgres", "--auth=trust",
                  "--no-sync", "-E", "UTF8")
        self._run(f"{self._bin}/pg_ctl", "-D", self._data, "-w", "-t", "30", "-l",
                  os.path.join(self._dir, "log"), "-o",
                  f"-p {self.port} -k {self._dir} -c listen_addresses=127.0.0.1 -c fsync=off",
                  "start")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.1)
        raise RuntimeError("PostgreSQL did not start")

    def stop(self) -> None:
        try:
            self._run(f"{self._bin}/pg_ctl", "-D", self._data, "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)
