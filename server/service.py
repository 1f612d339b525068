"""systemd units for the fleet server: ``arte-server.service`` (the HTTP API) and the template
``arte-server-worker@.service`` (job workers, which also drive the campaigns; enable ``@1``..``@N``: several
workers want PostgreSQL, on SQLite they take turns at the database's write lock).

Contract: :func:`render_units` turns a :class:`ServerServiceSpec` into unit texts after validating every
value (absolute paths, a valid user name, nothing that could inject a directive); :func:`enable_commands`
lists what an administrator runs to install and start them (the CLI prints them, it never runs them).
Both units run as an unprivileged user with the filesystem read-only except the server's data dir (and
the model dir, where converted models are cached), a private /tmp and no way to gain privileges; the
serve unit does not restart after exit status 3 (database not migrated: run ``arte-server init``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from arte.errors import ConfigError

__all__ = ["ServerServiceSpec", "render_units", "enable_commands", "SERVE_UNIT", "WORKER_UNIT"]

SERVE_UNIT = "arte-server.service"
WORKER_UNIT = "arte-server-worker@.service"
_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}\$?$")
_HOST_RE = re.compile(r"^[A-Za-z0-9.:\[\]-]{1,255}$")


@dataclass(frozen=True)
class ServerServiceSpec:
    """What goes into the units. ``write_paths``: more directories the processes may write."""

    exec_path: Path
    data_dir: Path
    user: str
    env_file: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8700
    api_workers: int = 1
    workers: int = 1
    write_paths: tuple[Path, ...] = field(default_factory=tuple)
    worker_memory_max_mib: int | None = None

    def __post_init__(self) -> None:
        paths = {"exec": self.exec_path, "data_dir": self.data_dir, "env_file": self.env_file}
        paths.update({f"write_paths[{i}]": p for i, p in enumerate(self.write_paths)})
        for name, value in paths.items():
            if value is not None and (any(ch in str(value) for ch in "\n\r\"") or not Path(value).is_absolute()):
                raise ConfigError(name, f"must be an absolute path without newlines or quotes, got {str(value)!r}")
        if not _USER_RE.match(self.user):
            raise ConfigError("user", f"{self.user!r} is not a valid user name")
        if not _HOST_RE.match(self.host):
            raise ConfigError("host", f"{self.host!r} is not a host name or address")
        for name, value, low, high in (("port", self.port, 1, 65535), ("api_workers", self.api_workers, 1, 256),
                                       ("workers", self.workers, 1, 256)):
            if not low <= value <= high:
                raise ConfigError(name, f"must be in [{low}, {high}], got {value}")
        if self.worker_memory_max_mib is not None and self.worker_memory_max_mib < 64:
            raise ConfigError("worker_memory_max_mib", f"must be >= 64, got {self.worker_memory_max_mib}")


def _q(path: Path) -> str:
    return f'"{path}"' if " " in str(path) else str(path)


def _common(spec: ServerServiceSpec) -> list[str]:
    lines = ["Type=simple", f"User={spec.user}"]
    if spec.env_file is not None:
        lines.append(f"EnvironmentFile={_q(spec.env_file)}")
    lines += [
        f'Environment="ARTE_SERVER_DATA_DIR={spec.data_dir}"',
        f"WorkingDirectory={_q(spec.data_dir)}",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=read-only",
        "PrivateTmp=yes",
        "ReadWritePaths=" + " ".join(_q(p) for p in (spec.data_dir, *spec.write_paths)),
        "Restart=on-failure",
        "RestartSec=5",
    ]
    return lines


def render_units(spec: ServerServiceSpec) -> dict[str, str]:
    """The unit files' texts by file name."""
    head = ["# Written by `arte-server service install`.", "[Unit]"]
    after = ["Wants=network-online.target", "After=network-online.target", ""]
    serve = [
        *head,
        "Description=ARTE Edge fleet server (HTTP API)",
        *after,
        "[Service]",
        *_common(spec),
        # 3: the database is not at the current revision; restarting cannot help (run `arte-server init`)
        "RestartPreventExitStatus=3",
        (f"ExecStart={_q(spec.exec_path)} serve --host {spec.host} --port {spec.port} "
         f"--workers {spec.api_workers} --no-access-log"),
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    worker = [
        *head,
        "Description=ARTE Edge job worker %i (jobs and campaigns)",
        *after,
        "[Service]",
        *_common(spec),
        "RestartPreventExitStatus=3",
        f"ExecStart={_q(spec.exec_path)} worker",
        # a killed attempt is re-queued by the other workers once its heartbeat is stale: stopping is safe
        "TimeoutStopSec=30",
        *([f"MemoryMax={spec.worker_memory_max_mib}M"] if spec.worker_memory_max_mib else []),
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return {SERVE_UNIT: "\n".join(serve), WORKER_UNIT: "\n".join(worker)}


def enable_commands(unit_dir: Path, workers: int) -> list[str]:
    """The commands an administrator runs to install, enable and watch the units."""
    instances = " ".join(f"arte-server-worker@{i}.service" for i in range(1, workers + 1))
    return [
        f"sudo install -m 0644 {_q(unit_dir / SERVE_UNIT)} {_q(unit_dir / WORKER_UNIT)} /etc/systemd/system/",
        "sudo systemctl daemon-reload",
        f"sudo systemctl enable --now {SERVE_UNIT} {instances}",
        f"systemctl status {SERVE_UNIT} 'arte-server-worker@*'",
        "journalctl -u arte-server -u 'arte-server-worker@*' -f",
    ]
