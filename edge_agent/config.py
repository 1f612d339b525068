"""Local settings a user may change (``edge-agent config set``), each checked before it is stored.

Contract: :func:`validate_setting` returns the value to store for ``key`` or raises
:class:`arte.errors.ConfigError` naming the key and the problem. ``data_path`` must load as a task (it is
stored as an absolute path and never sent); ``profile`` must be an installed firmware profile; ``model``
must resolve; ``dataset_key`` must be hex; ``privacy_total_epsilon`` (> 0, ``inf`` = no limit) and
``privacy_total_delta`` (in [0, 1)) are the device's lifetime local-DP budget, enforced by the accountant
before any report is built (see :mod:`edge_agent.privacy`); ``threads`` (1-256) overrides the profile's
``runtime.threads`` on this device (e.g. several agents sharing one machine).
"""

from __future__ import annotations

from pathlib import Path

from arte.errors import ArteError, ConfigError
from arte.home import model_dir
from arte.models import resolve_model
from arte.tasks import load_task
from firmware_profiles import PROFILE_DIR, load_profile

__all__ = ["SETTABLE", "validate_setting"]

SETTABLE = ("data_path", "profile", "model", "split_seed", "validation_share", "dataset_key", "server_url",
            "privacy_total_epsilon", "privacy_total_delta", "threads")


def validate_setting(key: str, value: str) -> str:
    """The checked value of setting ``key``."""
    if key not in SETTABLE:
        raise ConfigError(key, f"not a setting; one of {', '.join(SETTABLE)}")
    if key == "data_path":

        path = Path(value).expanduser().resolve()
        load_task(path)  # raises TaskFormatError naming the file, example and field
        return str(path)
    if key == "profile":

        if not (PROFILE_DIR / f"{value}.toml").is_file():
            known = sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))
            raise ConfigError(key, f"no profile {value!r}; one of {', '.join(known)}")
        return load_profile(PROFILE_DIR / f"{value}.toml").id
    if key == "model":

        try:
            resolve_model(value, model_dir())
        except ArteError as e:
            raise ConfigError(key, str(e)) from None
        return value if value == "default" else str(Path(value).expanduser().resolve())
    if key == "threads":
        if not value.isdigit() or not 1 <= int(value) <= 256:
            raise ConfigError(key, f"must be an integer from 1 to 256, got {value!r}")
        return str(int(value))
    if key == "split_seed":
        if not value.lstrip("-").isdigit():
            raise ConfigError(key, f"must be an integer, got {value!r}")
        return str(int(value))
    if key == "validation_share":
        try:
            share = float(value)
        except ValueError:
            raise ConfigError(key, f"must be a number, got {value!r}") from None
        if not 0.0 < share < 1.0:
            raise ConfigError(key, f"must be in (0, 1), got {share}")
        return str(share)
    if key in ("privacy_total_epsilon", "privacy_total_delta"):
        try:
            x = float(value)
        except ValueError:
            raise ConfigError(key, f"must be a number, got {value!r}") from None
        if key == "privacy_total_epsilon" and not x > 0:
            raise ConfigError(key, f"must be > 0 (inf for no limit), got {value}")
        if key == "privacy_total_delta" and not 0 <= x < 1:
            raise ConfigError(key, f"must be in [0, 1), got {value}")
        return repr(x)
    if key == "dataset_key":
        try:
            bytes.fromhex(value)
        except ValueError:
            raise ConfigError(key, "must be hex") from None
        return value.lower()
    if not value.startswith(("http://", "https://")):
        raise ConfigError(key, f"must be an http(s) URL, got {value!r}")
    return value.rstrip("/")
