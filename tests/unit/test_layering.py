"""Package rules (README "Architecture"), checked on the source with ``ast``:

* no shell (``edge_agent``, ``server``, ``arte_cli``) imports another shell, and nothing outside ``tests``
  imports ``tests``; ``arte`` imports no shell and no CLI, database or web framework;
* imports are at module level. A function-level import is allowed only for an optional heavy runtime
  (:data:`OPTIONAL`, each with its reason) or a project module that imports one at module level, so the
  dependency graph is what the top of each file says;
* ``import arte`` and ``edge-agent --help`` / ``arte --help`` stay light (no torch, transformers, llama_cpp);
* test modules share only through ``tests/support``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("arte", "arte_cli", "edge_agent", "server", "firmware_profiles", "benchmarks")
SHELLS = {"edge_agent", "server", "arte_cli"}

# Third-party modules a function may import lazily, and why. Anything else is imported at module level.
OPTIONAL = {
    "torch": "training/DPO runtime: seconds to import, absent from a torch-free agent install",
    "transformers": "HF models: seconds to import, needs torch",
    "peft": "LoRA adapters: needs torch",
    "trl": "DPO trainer: needs torch",
    "accelerate": "multi-device training: needs torch",
    "bitsandbytes": "4-bit QLoRA base: GPU only",
    "liger_kernel": "fused kernels: CUDA only",
    "datasets": "TRL's dataset type: pulls pyarrow and pandas",
    "safetensors": "adapter weights: training extra",
    "gguf": "GGUF writer/reader: training extra",
    "llama_cpp": "native llama.cpp runtime: loads a shared library, a CPU-specific build",
    "onnxruntime": "ONNX runtime: onnx extra",
    "onnx": "ONNX graphs: onnx extra",
    "optimum": "ONNX export: onnx extra",
    "matplotlib": "plots: experiment/server extra, a second to import",
    "psutil": "process memory: training extra",
    "uvloop": "uvicorn's faster event loop: not on Windows",
    "schemathesis": "API fuzzing: dev extra",
    "playwright": "browser tests: dev extra",
}

# ...and, inside ``arte`` only, extras its core install (numpy, platformdirs, tqdm) does not have.
ARTE_EXTRAS = {
    "httpx": "the endpoint teacher's HTTP client (agent/server extras)",
    "jinja2": "GGUF/HF chat templates (agent/server extras)",
}


def _files(pkg: str) -> list[Path]:
    return sorted(f for f in (ROOT / pkg).rglob("*.py") if "versions" not in f.parts)


def _module(f: Path) -> str:
    parts = list(f.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _targets(f: Path, node: ast.Import | ast.ImportFrom) -> list[str]:
    """Absolute module names an import statement may load (``from a import b`` may load ``a.b``)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:
        pkg = _module(f).split(".")
        if f.name != "__init__.py":
            pkg = pkg[:-1]
        pkg = pkg[:len(pkg) - node.level + 1]
        base = ".".join(pkg + ([base] if base else []))
    return [base] + [f"{base}.{a.name}" for a in node.names]


@cache
def _tree(f: Path) -> ast.Module:
    return ast.parse(f.read_text(), str(f))


def _imports(f: Path) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(module-level, function-level) imports of a file as (line, target)."""
    top: list[tuple[int, str]] = []
    inner: list[tuple[int, str]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                (inner if in_function else top).extend((child.lineno, t) for t in _targets(f, child))
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(_tree(f), False)
    return top, inner


@cache
def _project_files() -> dict[str, Path]:
    return {_module(f): f for pkg in PACKAGES for f in _files(pkg)}


@cache
def heavy(module: str) -> bool:
    """Whether importing ``module`` loads an optional runtime (through module-level imports only)."""
    if module.split(".")[0] in OPTIONAL:
        return True
    f = _project_files().get(module)
    if f is None:
        return False
    _heavy_visiting.add(module)
    try:
        return any(t not in _heavy_visiting and heavy(t) for _, t in _imports(f)[0])
    finally:
        _heavy_visiting.discard(module)


_heavy_visiting: set[str] = set()


@pytest.mark.parametrize("pkg, forbidden", [
    ("edge_agent", {"server", "arte_cli", "tests"}),
    ("server", {"edge_agent", "arte_cli", "tests"}),
    ("arte_cli", {"server", "edge_agent", "tests"}),
    ("arte", {"server", "edge_agent", "arte_cli", "tests", "click", "sqlalchemy", "fastapi"}),
    ("firmware_profiles", {"server", "edge_agent", "arte_cli", "tests"}),
    ("benchmarks", {"tests"}),
])
def test_forbidden_imports(pkg: str, forbidden: set[str]) -> None:
    bad = [f"{f.relative_to(ROOT)}:{line} imports {t}" for f in _files(pkg)
           for line, t in sum(_imports(f), []) if t.split(".")[0] in forbidden]
    assert not bad, f"{pkg} must not import {sorted(forbidden)}:\n" + "\n".join(sorted(set(bad)))


@pytest.mark.parametrize("pkg", PACKAGES)
def test_function_level_imports_only_for_optional_runtimes(pkg: str) -> None:
    lazy_ok = set(ARTE_EXTRAS) if pkg == "arte" else set()
    bad = []
    for f in _files(pkg):
        for line, target in _imports(f)[1]:
            if target.split(".")[0] not in lazy_ok and not heavy(target):
                bad.append(f"{f.relative_to(ROOT)}:{line} imports {target} inside a function")
    # ``from a import b`` yields both ``a`` and ``a.b``: one of them heavy is enough
    by_line: dict[str, list[str]] = {}
    for b in bad:
        by_line.setdefault(b.split(" imports ")[0], []).append(b)
    heavy_lines = {f"{f.relative_to(ROOT)}:{line}" for f in _files(pkg) for line, t in _imports(f)[1]
                   if heavy(t) or t.split(".")[0] in lazy_ok}
    bad = [b for loc, items in by_line.items() if loc not in heavy_lines for b in items]
    assert not bad, ("import these at module level (only optional runtimes in OPTIONAL, or modules that load "
                     "them, may be imported inside a function):\n" + "\n".join(sorted(set(bad))))


def test_the_checks_can_fail(tmp_path: Path) -> None:
    f = ROOT / "arte" / "_layering_probe.py"
    f.write_text("def f():\n    import json\n    from arte import tasks\n    import torch\n\n\nimport tests\n")
    try:
        _tree.cache_clear()
        _project_files.cache_clear()
        top, inner = _imports(f)
        assert top == [(7, "tests")]
        assert [t for _, t in inner] == ["json", "arte", "arte.tasks", "torch"]
        assert heavy("torch") and not heavy("json") and not heavy("arte.tasks")
        with pytest.raises(AssertionError, match="arte/_layering_probe.py:2 imports json"):
            test_function_level_imports_only_for_optional_runtimes("arte")
        with pytest.raises(AssertionError, match="_layering_probe.py:7 imports tests"):
            test_forbidden_imports("arte", {"tests"})
    finally:
        f.unlink()
        _tree.cache_clear()
        _project_files.cache_clear()


@pytest.mark.parametrize("code", [
    "import arte, arte.scoring, arte.tasks, arte.wire",
    "import sys; sys.argv=['edge-agent', '--help']\nfrom edge_agent.cli import main\ntry: main()\nexcept SystemExit: pass",
    "import sys; sys.argv=['arte', '--help']\nfrom arte_cli.cli import main\ntry: main()\nexcept SystemExit: pass",
])
def test_light_imports(code: str) -> None:
    check = code + "\nimport sys\nheavy = [m for m in ('torch', 'transformers', 'llama_cpp', 'trl', 'peft') if m in sys.modules]\nprint(heavy)"
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout


def test_test_modules_share_only_through_support() -> None:
    """A test module imports no other test module: what tests share lives in ``tests/support``."""
    bad = [f"{f.relative_to(ROOT)}:{line} imports {t}" for kind in ("unit", "integration", "slow")
           for f in sorted((ROOT / "tests" / kind).glob("*.py")) for line, t in sum(_imports(f), [])
           if t.split(".")[:2] in (["tests", "unit"], ["tests", "integration"], ["tests", "slow"])]
    assert not bad, "move what these share into tests/support:\n" + "\n".join(bad)
