"""Package rules from DESIGN.md: no shell (edge_agent, server, arte_cli) imports another or tests; arte imports none,
and `import arte` / `edge-agent --help` stay light (no torch, transformers, llama_cpp at import)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _imports(pkg: str) -> set[tuple[str, str]]:
    found = set()
    for f in (ROOT / pkg).rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Import):
                found |= {(str(f.relative_to(ROOT)), a.name.split(".")[0]) for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add((str(f.relative_to(ROOT)), node.module.split(".")[0]))
    return found


@pytest.mark.parametrize("pkg, forbidden", [
    # no shell imports another shell (the user's home and model directories live in arte.home)
    ("edge_agent", {"server", "arte_cli", "tests"}),
    ("server", {"edge_agent", "arte_cli", "tests"}),
    ("arte_cli", {"server", "edge_agent", "tests"}),
    ("arte", {"server", "edge_agent", "arte_cli", "tests", "click", "sqlalchemy", "fastapi"}),
])
def test_forbidden_imports(pkg: str, forbidden: set[str]) -> None:
    bad = sorted((f, m) for f, m in _imports(pkg) if m in forbidden)
    assert not bad, f"{pkg} must not import {forbidden}: {bad}"


@pytest.mark.parametrize("code", [
    "import arte, arte.scoring, arte.tasks, arte.wire",
    "import sys; sys.argv=['edge-agent', '--help']\nfrom edge_agent.cli import main\ntry: main()\nexcept SystemExit: pass",
    "import sys; sys.argv=['arte', '--help']\nfrom arte_cli.cli import main\ntry: main()\nexcept SystemExit: pass",
])
def test_light_imports(code: str) -> None:
    check = code + "\nimport sys\nheavy = [m for m in ('torch', 'transformers', 'llama_cpp', 'trl', 'peft') if m in sys.modules]\nprint(heavy)"
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
