"""Where ARTE keeps per-user files, shared by every shell (``arte``, ``edge-agent``, ``arte-server``): it
lives in the library so that no shell imports another for it.

``ARTE_HOME`` (default: the user cache dir, e.g. ``~/.cache/arte-edge``) holds ``models/`` (the embedded
default model and converted copies) unless ``ARTE_MODEL_DIR`` points elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

__all__ = ["arte_home", "model_dir", "convert_dir"]


def arte_home() -> Path:
    env = os.environ.get("ARTE_HOME")
    if env:
        return Path(env).expanduser()

    return Path(platformdirs.user_cache_dir("arte-edge"))


def model_dir() -> Path:
    env = os.environ.get("ARTE_MODEL_DIR")
    return Path(env).expanduser() if env else arte_home() / "models"


def convert_dir() -> Path:
    """Where GGUF models converted for transformers are cached."""
    return model_dir() / "hf"
