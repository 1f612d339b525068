"""Shared fixtures. Tiers: unit (fast, fakes at the edges), integration (real servers on loopback, real
databases), slow (the real embedded model; marked ``slow``), gpu (skipped without CUDA)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"

pytest_plugins = ["tests.support.server_support"]   # fleet server fixtures (backend, fleet); imports lazily
BIGBENCH = DATA / "bigbench"   # five BIG-bench tasks, vendored unchanged (Apache-2.0; README there)


def _model_dir() -> Path:
    from arte.home import model_dir

    return model_dir()


@pytest.fixture(scope="session")
def bigbench_dir() -> Path:
    return BIGBENCH


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def default_model():
    """The embedded default model (a verified ModelRef); slow tests skip if it is not installed."""
    from arte.errors import ModelError
    from arte.models import resolve_model

    try:
        return resolve_model("default", _model_dir())
    except ModelError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def n_threads() -> int:
    """Threads for llama.cpp in tests: all cores, or 1 when the machine is oversubscribed — ggml's
    spinning thread barrier slows 2 threads down many times over when other processes hold the cores."""
    if os.environ.get("ARTE_TEST_THREADS"):
        return int(os.environ["ARTE_TEST_THREADS"])
    cores = os.cpu_count() or 1
    return 1 if os.getloadavg()[0] > cores else min(cores, 4)


@pytest.fixture(scope="session")
def postgres_url() -> str:
    url = os.environ.get("ARTE_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("PostgreSQL not configured (set ARTE_TEST_POSTGRES_URL); ran on SQLite only")
    return url


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip_gpu)


@pytest.fixture
def private_data(tmp_path: Path) -> Path:
    p = tmp_path / "private" / "secret_task.jsonl"
    p.parent.mkdir()
    p.write_text("".join(json.dumps({"input": f"Is {i} even? secret-item-{i}", "choices": ["yes", "no"],
                                     "answer": "yes" if i % 2 == 0 else "no"}) + "\n" for i in range(40)))
    return p
