"""Process settings of the agent (pydantic-settings, env prefix ``EDGE_AGENT_``).

These say where the agent keeps its state and how it talks and polls; what the agent IS (server, device
id, cohort, profile, private data path) lives in the state dir (:mod:`edge_agent.state`), written by
``enroll`` and ``config set``. An env file (``EnvironmentFile=`` in the systemd unit) sets the same names.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from arte.home import arte_home

__all__ = ["AgentSettings"]


def _default_state_dir() -> Path:
    return arte_home() / "agent"


class AgentSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EDGE_AGENT_", extra="ignore")

    state_dir: Path = Field(default_factory=_default_state_dir,
                            description="The agent's state dir (SQLite state, device key, datasets, adapters).")
    timeout_s: float = Field(default=30.0, gt=0, description="HTTP timeout per request, seconds.")
    retries: int = Field(default=5, ge=1, le=100, description="Attempts per request before giving up.")
    retry_base_s: float = Field(default=0.5, ge=0, description="First retry's backoff ceiling, seconds.")
    retry_max_s: float = Field(default=30.0, ge=0, description="Largest backoff between retries, seconds.")
    poll_s: float = Field(default=60.0, gt=0, description="`run`: wait between iterations with work to do.")
    max_poll_s: float = Field(default=3600.0, gt=0, description="`run`: longest wait while idle.")
    root: Path = Field(default=Path("/"), description="Where /proc and /sys are read from (tests, containers).")
    log_level: str = Field(default="INFO", description="Logging level of the agent's stderr log.")
