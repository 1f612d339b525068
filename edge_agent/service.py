"""A systemd unit for the agent, written to a path the user chooses (no root needed to write it).

Contract: :func:`render_unit` turns a :class:`ServiceSpec` into unit text (``Restart=on-failure``, the
user's account, env file and state dir) after validating every value (absolute paths, a valid user name,
no newlines that could inject directives); :func:`enable_commands` lists the commands that install and
start it, which the CLI prints rather than runs.

The unit is hardened: no privilege gain (``NoNewPrivileges``), the whole filesystem read-only
(``ProtectSystem=strict``, ``ProtectHome=read-only``: the private data stays readable) except the state
dir and ``write_paths`` (the model dir, where models converted for training are cached; a path that does
not exist is skipped), a private /tmp, idle I/O priority, and ``MemoryMax`` (:func:`memory_max_mib`: the
profile's memory budget plus a quarter for the agent itself), so a runaway fine-tune is killed by the
kernel instead of the device's other work.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from arte.errors import ConfigError

__all__ = ["ServiceSpec", "render_unit", "enable_commands", "memory_max_mib"]

_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}\$?$")


@dataclass(frozen=True)
class ServiceSpec:
    """What goes into the unit. ``env_file`` is optional (``EnvironmentFile=``)."""

    exec_path: Path
    state_dir: Path
    user: str
    name: str = "edge-agent"
    env_file: Path | None = None
    working_dir: Path | None = None
    restart_sec: int = 30
    nice: int = 10
    memory_max_mib: int | None = None
    write_paths: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        for field, value in (("exec", self.exec_path), ("state_dir", self.state_dir),
                             ("env_file", self.env_file), ("working_dir", self.working_dir),
                             *((f"write_paths[{i}]", p) for i, p in enumerate(self.write_paths))):
            if value is None:
                continue
            if "\n" in str(value) or "\r" in str(value):
                raise ConfigError(field, "must not contain a newline")
            if not Path(value).is_absolute():
                raise ConfigError(field, f"must be an absolute path, got {str(value)!r}")
        if not _USER.match(self.user):
            raise ConfigError("user", f"{self.user!r} is not a valid user name")
        if not re.fullmatch(r"[A-Za-z0-9_.@-]+", self.name):
            raise ConfigError("name", f"{self.name!r} is not a valid unit name")
        if not 1 <= self.restart_sec <= 86400:
            raise ConfigError("restart_sec", f"must be in [1, 86400], got {self.restart_sec}")
        if not -20 <= self.nice <= 19:
            raise ConfigError("nice", f"must be in [-20, 19], got {self.nice}")
        if self.memory_max_mib is not None and self.memory_max_mib < 64:
            raise ConfigError("memory_max_mib", f"must be >= 64, got {self.memory_max_mib}")


def memory_max_mib(budget_mib: int) -> int:
    """``MemoryMax`` for a profile's memory budget: the budget bounds the student and the trainer; the
    agent's own process (Python, SQLite, HTTP) gets a quarter more."""
    return budget_mib + budget_mib // 4


def _quote(path: Path) -> str:
    s = str(path)
    return f'"{s}"' if " " in s else s


def render_unit(spec: ServiceSpec) -> str:
    """The unit file text."""
    lines = [
        "# Written by `edge-agent service install`.",
        "[Unit]",
        "Description=ARTE edge agent (scores drafts on private data, fine-tunes the student)",
        "Wants=network-online.target",
        "After=network-online.target",
        "",
        "[Service]",
        "Type=simple",
        f"User={spec.user}",
    ]
    if spec.env_file is not None:
        lines.append(f"EnvironmentFile={_quote(spec.env_file)}")
    lines.append(f'Environment="EDGE_AGENT_STATE_DIR={spec.state_dir}"')
    if spec.working_dir is not None:
        lines.append(f"WorkingDirectory={_quote(spec.working_dir)}")
    lines += [
        f"ExecStart={_quote(spec.exec_path)} run",
        "Restart=on-failure",
        f"RestartSec={spec.restart_sec}",
        # auth refused (7) and not enrolled (12) need an operator: restarting would not help
        "RestartPreventExitStatus=7 12",
        f"Nice={spec.nice}",
        "IOSchedulingClass=idle",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=read-only",
        "PrivateTmp=yes",
        "ReadWritePaths=" + " ".join([_quote(spec.state_dir), *("-" + _quote(p) for p in spec.write_paths)]),
        *([f"MemoryMax={spec.memory_max_mib}M"] if spec.memory_max_mib else []),
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(lines)


def enable_commands(unit_path: Path, name: str) -> list[str]:
    """The commands an administrator runs to install, enable and watch the unit."""
    return [
        f"sudo install -m 0644 {_quote(unit_path)} /etc/systemd/system/{name}.service",
        "sudo systemctl daemon-reload",
        f"sudo systemctl enable --now {name}.service",
        f"systemctl status {name}.service",
        f"journalctl -u {name}.service -f",
    ]
