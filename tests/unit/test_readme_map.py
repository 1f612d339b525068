"""README.md is a map, and a true one: short, its file tree complete both ways, every relative link live.

The tree is the fenced block under "## Files". Each line is ``<indent><names>  <gloss>``: two spaces of
indent per level, then one or more names separated by single spaces, then (after two or more spaces) a gloss
that is not checked. A name ending in ``/`` is a directory; deeper lines are inside the last directory named
on the line above them at one level less. A name may hold a ``/`` (``.ci/run``).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path, PurePosixPath

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
MAX_LINES = 300
# packages whose every Python module the tree must name
PACKAGES = ("arte", "arte_cli", "edge_agent", "server", "firmware_profiles", "benchmarks")
NOT_LISTED = ("server/migrations/versions/",)   # Alembic revisions: one per schema change, not a map entry


def _tracked() -> list[str]:
    """The repository's files: git's list when this is a checkout, else every file on disk (an unpacked sdist)."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
        names = [n for n in out.stdout.decode().split("\0") if n]
        if names:
            return [n for n in names if (ROOT / n).exists()]   # a file deleted but not yet staged is gone
    except (OSError, subprocess.CalledProcessError):
        pass
    return [str(p.relative_to(ROOT).as_posix()) for p in ROOT.rglob("*")
            if p.is_file() and ".git" not in p.parts and "__pycache__" not in p.parts]


def tree_block(text: str) -> list[str]:
    """The lines of the first fenced block after the "## Files" heading."""
    lines = text.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "## Files")
    except StopIteration:
        raise AssertionError('README.md has no "## Files" section') from None
    fence = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("```"))
    end = next(i for i in range(fence + 1, len(lines)) if lines[i].startswith("```"))
    return lines[fence + 1:end]


def parse_tree(block: list[str]) -> list[str]:
    """Every path the tree names, relative to the root; directories keep their trailing ``/``."""
    names: list[str] = []
    parents: list[str] = []          # parents[d]: the directory that lines at depth d + 1 are in
    for n, line in enumerate(block, 1):
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        assert indent % 2 == 0, f"tree line {n}: indent {indent} is not a multiple of 2: {line!r}"
        depth = indent // 2
        assert depth <= len(parents), f"tree line {n}: indented past its parent directory: {line!r}"
        del parents[depth:]
        prefix = "".join(parents)
        tokens = re.split(r" {2,}", line.strip(), maxsplit=1)[0].split(" ")
        last_dir = None
        for token in tokens:
            names.append(prefix + token)
            if token.endswith("/"):
                last_dir = prefix + token
        if last_dir is not None:
            parents.append(last_dir[len(prefix):])
    return names


def test_the_readme_is_short() -> None:
    n = len(README.read_text().splitlines())
    assert n < MAX_LINES, f"README.md has {n} lines; keep it a map under {MAX_LINES} and move detail to docs/"


def test_the_tree_parser() -> None:
    block = ["a/  gloss  with gaps", "  x.py y.py  two files", "  sub/", "    z.py", "  w.py", "top.txt .ci/run"]
    assert parse_tree(block) == ["a/", "a/x.py", "a/y.py", "a/sub/", "a/sub/z.py", "a/w.py", "top.txt", ".ci/run"]
    with pytest.raises(AssertionError, match="indented past"):
        parse_tree(["a.py", "    b.py"])


def test_every_name_in_the_tree_exists() -> None:
    missing = [name for name in parse_tree(tree_block(README.read_text()))
               if not ((ROOT / name).is_dir() if name.endswith("/") else (ROOT / name).is_file())]
    assert not missing, f"README.md's file tree names what does not exist: {missing}"


def test_every_module_and_top_level_entry_is_in_the_tree() -> None:
    named = set(parse_tree(tree_block(README.read_text())))
    tracked = _tracked()
    modules = [f for f in tracked if f.endswith(".py") and f.split("/")[0] in PACKAGES
               and not f.startswith(NOT_LISTED)]
    assert modules, "no modules found: is the test running from the repository?"
    def top_level(path: str) -> str:             # `arte/x.py` and `arte/` -> `arte/`; `.ci/run` -> `.ci/`
        return path.split("/")[0] + ("/" if "/" in path else "")

    top = {top_level(f) for f in tracked}
    named_top = {top_level(n) for n in named}
    missing = sorted(f for f in modules if f not in named) + sorted(t for t in top if t not in named_top)
    assert not missing, f"README.md's file tree omits: {missing}"


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _anchors(md: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown file."""
    out, fenced = set(), False
    for line in md.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return out


def _links(md: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", md.read_text(), flags=re.S)   # code blocks hold no links
    text = re.sub(r"`[^`\n]*`", "", text)
    return LINK.findall(text)


@pytest.mark.parametrize("md", [README, *sorted((ROOT / "docs").glob("*.md"))], ids=lambda p: p.name)
def test_relative_links_point_to_something(md: Path) -> None:
    bad = []
    for target in _links(md):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):      # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (md.parent / PurePosixPath(path)).resolve() if path else md
        if not dest.exists():
            bad.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            bad.append(f"{target} (no heading with that anchor)")
    assert not bad, f"{md.relative_to(ROOT)} has dead links: {bad}"
