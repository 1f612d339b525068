"""A throwaway PostgreSQL cluster: initdb + pg_ctl in a temp dir on a free loopback port, trust auth.

Used by the server benchmarks (``server_load.py``) and the fault tests, which kill and restart the
database under load. :func:`pg_cluster` starts one and removes it afterwards; :class:`PgUnavailable` says
why none can be started here (no server binaries in ``/usr/lib/postgresql/*/bin``).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["PgCluster", "PgUnavailable", "free_port", "pg_bin", "pg_cluster"]


class PgUnavailable(RuntimeError):
    """No PostgreSQL server binaries to start a cluster with."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bin() -> Path | None:
    """The newest installed PostgreSQL server binaries (Debian layout), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


class PgCluster:
    """initdb + pg_ctl in ``root`` on a free loopback port, trust auth; run as the ``postgres`` user
    when we are root (PostgreSQL refuses to run as root)."""

    def __init__(self, root: Path, bindir: Path, shared_buffers: str = "32MB") -> None:
        self.root, self.bindir = root, bindir
        self.shared_buffers = shared_buffers
        self.data = root / "data"
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(root, pw.pw_uid, pw.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--no-sync", "--no-instructions")

    def _run(self, exe: str, *args: str) -> None:
        out = subprocess.run([*self.as_user, str(self.bindir / exe), *args], capture_output=True, text=True,
                             cwd=self.root)
        assert out.returncode == 0, f"{exe}: {out.stdout[-1000:]} {out.stderr[-2000:]}"

    def _options(self) -> str:
        return (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=on "
                f"-c max_connections=200 -c shared_buffers={self.shared_buffers}")

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "pg.log"), "-o", self._options(),
                  "-w", "-t", "120", "start")

    def restart(self, mode: str = "fast") -> None:
        """Stop (``fast``: abort sessions, ``immediate``: crash-like) and start again."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "120", "stop")
        self.start()

    def stop(self) -> None:
        subprocess.run([*self.as_user, str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                        "-w", "stop"], capture_output=True)


@contextmanager
def pg_cluster(shared_buffers: str = "32MB") -> Iterator[PgCluster]:
    """A started throwaway cluster in its own temp dir (not under pytest's tmp_path, whose 0700 parents
    the ``postgres`` user cannot enter), stopped and removed afterwards."""
    bindir = pg_bin()
    if bindir is None or (os.geteuid() == 0 and shutil.which("runuser") is None):
        raise PgUnavailable("PostgreSQL server binaries (/usr/lib/postgresql/*/bin) not installed"
                            + (", or runuser missing (needed as root)" if bindir is not None else ""))
    root = Path(tempfile.mkdtemp(prefix="arte-pg-"))
    try:
        cluster = PgCluster(root, bindir, shared_buffers)
        cluster.start()
        try:
            yield cluster
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
