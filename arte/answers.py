"""Answer tags and answer matching.

Teachers and students end a rationale with ``<ans>…</ans>``. A generated answer is correct when its
normalized text equals the normalized text of one of the item's accepted targets (the paper's exact match).
Normalization: Unicode NFKC, case-folded, whitespace collapsed, surrounding quotes/brackets and trailing
sentence punctuation removed. Nothing more lenient: "3" and "three" differ unless the task accepts both.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Iterable

__all__ = ["ANS_OPEN", "ANS_CLOSE", "parse_answer", "normalize_answer", "is_correct", "tag_answer"]

ANS_OPEN = "<ans>"
ANS_CLOSE = "</ans>"
_ANS_RE = re.compile(r"<ans>(.*?)</ans>", re.DOTALL | re.IGNORECASE)
_STRIP = " \t\n\r\"'`“”‘’()[]{}*"


def parse_answer(text: str) -> str | None:
    """The content of the first complete ``<ans>…</ans>`` in ``text``, stripped; None if there is none
    or it is empty."""
    m = _ANS_RE.search(text)
    if m is None:
        return None
    ans = m.group(1).strip()
    return ans or None


def normalize_answer(text: str) -> str:
    """Canonical form used to compare answers."""
    t = unicodedata.normalize("NFKC", text).casefold()
    t = " ".join(t.split())
    prev = None
    while prev != t:
        prev = t
        t = t.strip(_STRIP).rstrip(".,;:!?").strip(_STRIP)
    return t


def is_correct(answer: str | None, targets: Iterable[str]) -> bool:
    """Whether ``answer`` matches one of ``targets`` after normalization."""
    if answer is None:
        return False
    a = normalize_answer(answer)
    return bool(a) and any(a == normalize_answer(t) for t in targets)


def tag_answer(answer: str) -> str:
    """``answer`` wrapped in the answer tags."""
    return f"{ANS_OPEN}{answer}{ANS_CLOSE}"
