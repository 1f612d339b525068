"""A small output-format language: one description, rendered for every decoder.

Contract: a format is a tree of these node kinds —

* :class:`Lit` — exact text;
* :class:`Chars` — a run of ``min``..``max`` bytes from a :class:`CharClass` (e.g. ``[^<\\n]``, digits);
* :class:`Seq` — parts in order; :class:`Alt` — one of several parts;
* :class:`Opt` — an optional part;
* :class:`Items` — ``min``..``max`` items separated by a literal, pairwise *distinct* (compared without
  case, spacing or punctuation) where the automaton decides; a text pattern cannot say "distinct", so
  there it is only a list (not nested in another :class:`Items`).

wrapped in a :class:`Format` (the whole reply must match it). The same :class:`Format` is

* a **regular expression** (:meth:`Format.regex`) for vLLM's structured outputs,
* a **GBNF grammar** (:meth:`Format.gbnf`) for llama-server's ``grammar``,
* a **byte automaton** (:class:`Matcher`) that local decoders consult token by token
  (:mod:`arte.constrain`).

Some parts are *soft*: free text (``Chars(..., soft=True)``), optional parts (:class:`Opt`) and items
beyond the minimum. When a decoder must finish (its token budget is nearly spent, or the model wanted to
stop early), the matcher is asked with ``finishing=True``: a soft run takes no byte beyond its minimum
(a hard one none beyond :data:`FINISH_CAP`), optional parts and further items are not entered, so only
what the format still requires remains (e.g. ``<ans>``, then one of the options).

Matching is on UTF-8 bytes: a class lists ASCII characters only; non-ASCII characters belong to a
negated class (``[^<\\n]``) and to no positive one, and a run takes them only whole and well-formed.
``min``/``max`` count bytes.
Rendered as text patterns, a ``max`` above :data:`UNBOUNDED_ABOVE` is written as unbounded (a token
budget bounds the run anyway, and engines compile large counted repetitions slowly).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Union

from arte.errors import ConfigError

__all__ = ["CharClass", "Lit", "Chars", "Seq", "Alt", "Opt", "Items", "Node", "Format", "Matcher", "DIGITS",
           "UPPER", "LOWER", "CONTROL", "UNBOUNDED_ABOVE", "FINISH_CAP"]

UNBOUNDED_ABOVE = 255
FINISH_CAP = 24     # bytes a hard run may still take while finishing (see Matcher)


@dataclass(frozen=True)
class CharClass:
    """A set of bytes: the ASCII ``chars`` (or every byte but them, with ``negate``)."""

    chars: str
    negate: bool = False

    def __post_init__(self) -> None:
        if not self.chars or not self.chars.isascii():
            raise ConfigError("chars", f"a character class lists ASCII characters, got {self.chars!r}")

    def allows(self, byte: int) -> bool:
        if byte >= 0x80:
            return self.negate
        return (chr(byte) in self.chars) != self.negate

    def pattern(self, gbnf: bool = False) -> str:
        """The class as ``[...]`` (the same text works in regexes and GBNF)."""
        codes = sorted(set(ord(c) for c in self.chars))
        runs: list[tuple[int, int]] = []
        for c in codes:
            if runs and runs[-1][1] == c - 1:
                runs[-1] = (runs[-1][0], c)
            else:
                runs.append((c, c))
        body = "".join(_class_char(a) if a == b else f"{_class_char(a)}{'' if b == a + 1 else '-'}{_class_char(b)}"
                       for a, b in runs)
        return f"[{'^' if self.negate else ''}{body}]"


DIGITS = CharClass("0123456789")
CONTROL = "".join(chr(c) for c in range(32) if chr(c) not in "\t\n") + "\x7f"   # never in text
UPPER = CharClass("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
LOWER = CharClass("abcdefghijklmnopqrstuvwxyz")


@dataclass(frozen=True)
class Lit:
    text: str


@dataclass(frozen=True)
class Chars:
    cls: CharClass
    min: int = 0
    max: int = 1 << 30
    soft: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.min <= self.max:
            raise ConfigError("max", f"need 0 <= min <= max, got {self.min} and {self.max}")


@dataclass(frozen=True)
class Seq:
    parts: tuple["Node", ...]


@dataclass(frozen=True)
class Alt:
    options: tuple["Node", ...]

    def __post_init__(self) -> None:
        if not self.options:
            raise ConfigError("options", "an alternative needs at least one option")


@dataclass(frozen=True)
class Opt:
    part: "Node"


@dataclass(frozen=True)
class Items:
    item: "Node"
    sep: str
    min: int = 1
    max: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.max:
            raise ConfigError("max", f"need 1 <= min <= max items, got {self.min} and {self.max}")
        if not self.sep:
            raise ConfigError("sep", "items need a separator")


Node = Union[Lit, Chars, Seq, Alt, Opt, Items]


@dataclass(frozen=True)
class Format:
    """A whole reply's format: ``root`` must match all of it. ``name`` says which (for counts and logs)."""

    root: Node
    name: str = "format"

    def regex(self) -> str:
        """The format as a regular expression (for vLLM's ``structured_outputs.regex``)."""
        return _regex(self.root)

    def gbnf(self) -> str:
        """The format as a GBNF grammar with one rule, ``root`` (for llama-server's ``grammar``)."""
        return f"root ::= {_gbnf(self.root)}\n"

    def finish_bytes(self, cap: int = FINISH_CAP) -> int:
        """At most how many bytes finishing can still require from any point: soft runs at their minimum,
        optional parts skipped, the longest alternative, hard runs counted up to ``cap`` bytes. Decoders
        start finishing when their remaining tokens reach this (a token has at least one byte)."""
        return _finish(self.root, cap)

    def matcher(self) -> "Matcher":
        return _matcher(self)


# ---- rendering --------------------------------------------------------------------------------------

_REGEX_SPECIAL = set(".^$*+?()[]{}|\\")


def _class_char(code: int) -> str:
    c = chr(code)
    if c == "\n":
        return "\\n"
    if c == "\t":
        return "\\t"
    if c == "\r":
        return "\\r"
    if c in "]\\^-[":
        return "\\" + c
    if code < 0x20 or code == 0x7F:
        return f"\\x{code:02x}"
    return c


def _count(n_min: int, n_max: int) -> str:
    if n_max > UNBOUNDED_ABOVE:
        return "*" if n_min == 0 else "+" if n_min == 1 else f"{{{n_min},}}"
    if n_min == n_max:
        return "" if n_min == 1 else f"{{{n_min}}}"
    return "?" if (n_min, n_max) == (0, 1) else f"{{{n_min},{n_max}}}"


def _regex(node: Node) -> str:
    if isinstance(node, Lit):
        out = []
        for c in node.text:
            out.append("\\n" if c == "\n" else "\\t" if c == "\t" else "\\" + c if c in _REGEX_SPECIAL else c)
        return "".join(out)
    if isinstance(node, Chars):
        return "" if node.max == 0 else node.cls.pattern() + _count(node.min, node.max)
    if isinstance(node, Seq):
        return "".join(_regex(p) for p in node.parts)
    if isinstance(node, Alt):
        return "(" + "|".join(_regex(o) for o in node.options) + ")"
    if isinstance(node, Opt):
        return "(" + _regex(node.part) + ")?"
    if isinstance(node, Items):
        one = _regex(node.item)
        more = _count(node.min - 1, node.max - 1) if node.max > 1 else ""
        return one + (f"({_regex(Lit(node.sep))}{one}){more}" if node.max > 1 else "")
    raise TypeError(f"not a format node: {node!r}")


def _gbnf(node: Node) -> str:
    if isinstance(node, Lit):
        if not node.text:
            return '""'
        esc = node.text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
        return f'"{esc}"'
    if isinstance(node, Chars):
        return '""' if node.max == 0 else node.cls.pattern(gbnf=True) + _count(node.min, node.max)
    if isinstance(node, Seq):
        return " ".join(_gbnf(p) for p in node.parts) or '""'
    if isinstance(node, Alt):
        return "(" + " | ".join(_gbnf(o) for o in node.options) + ")"
    if isinstance(node, Opt):
        return "(" + _gbnf(node.part) + ")?"
    if isinstance(node, Items):
        one = _gbnf(node.item)
        more = _count(node.min - 1, node.max - 1) if node.max > 1 else ""
        return one + (f" ({_gbnf(Lit(node.sep))} {one}){more}" if node.max > 1 else "")
    raise TypeError(f"not a format node: {node!r}")


def _finish(node: Node, cap: int) -> int:
    if isinstance(node, Lit):
        return len(node.text.encode("utf-8"))
    if isinstance(node, Chars):
        return node.min if node.soft else max(node.min, min(node.max, cap))
    if isinstance(node, Seq):
        return sum(_finish(p, cap) for p in node.parts)
    if isinstance(node, Alt):
        return max(_finish(o, cap) for o in node.options)
    if isinstance(node, Opt):
        return 0
    if isinstance(node, Items):
        return node.min * _finish(node.item, cap) + (node.min - 1) * len(node.sep.encode("utf-8"))
    raise TypeError(f"not a format node: {node!r}")


# ---- the byte automaton -----------------------------------------------------------------------------

# States of the compiled automaton, as tuples (kind, ...):
#   ("byte", value, next)           consumes the one byte ``value``
#   ("split", targets, soft)        epsilon moves; a soft split (an Opt) follows only targets[0] (skip)
#                                   when finishing
#   ("run", table, min, max, soft, next)  a counted run of bytes allowed by table (256 bools)
#   ("items", first)                opens a list of items: a fresh item context, then ``first``
#   ("item", entry)                 an item starts: its bytes are recorded from here
#   ("item_end", min, max, sep, exit)  an item ended: it must differ from the earlier ones; then the
#                                   separator and another item (below max; not while finishing once at
#                                   min) or the exit (at min or more)
#   ("accept",)
# A configuration is a frozenset of (state, count, pending, items) tuples *before* epsilon moves (its
# kernel: the closure depends on whether the decoder is finishing, which can change between two bytes).
# In a run, ``count`` is its bytes so far and ``pending`` the continuation bytes its last UTF-8 character
# still needs: a run takes whole, well-formed characters only, so a constrained reply always decodes.
# ``items`` is None outside a list, else (keys of the finished items, the current item's bytes, count).


def _utf8_length(byte: int) -> int:
    """Bytes of the UTF-8 character this byte starts (0: it cannot start one)."""
    if byte < 0x80:
        return 1
    if 0xC2 <= byte <= 0xDF:
        return 2
    if 0xE0 <= byte <= 0xEF:
        return 3
    if 0xF0 <= byte <= 0xF4:
        return 4
    return 0


_CONTINUATION = frozenset(range(0x80, 0xC0))
_NOT_WORD = re.compile(rb"[^0-9a-z\x80-\xff]+")


def _item_key(item: bytes) -> bytes:
    """What makes two items the same: case, spacing and punctuation ignored."""
    return _NOT_WORD.sub(b" ", item.lower()).strip()


Kernel = frozenset


class Matcher:
    """Consumes bytes of a reply and says what the format still allows (see the module docstring).

    While finishing, a run takes no byte beyond its minimum when soft, beyond ``max(min, min(max,
    finish_cap))`` bytes when hard (the bound :meth:`Format.finish_bytes` assumes)."""

    def __init__(self, fmt: Format, finish_cap: int = FINISH_CAP) -> None:
        self.format = fmt
        self.finish_cap = finish_cap
        self.states: list[tuple] = []
        accept = self._add(("accept",))
        self.start: Kernel = frozenset({(self._compile(fmt.root, accept), 0, 0, None)})
        self._closures: dict[tuple[Kernel, bool], frozenset] = {}
        self._steps: dict[tuple[Kernel, int, bool], Kernel] = {}

    def _add(self, state: tuple) -> int:
        self.states.append(state)
        return len(self.states) - 1

    def _compile(self, node: Node, nxt: int) -> int:
        """Compile ``node`` so that it continues at state ``nxt``; returns its entry state."""
        if isinstance(node, Lit):
            for b in reversed(node.text.encode("utf-8")):
                nxt = self._add(("byte", b, nxt))
            return nxt
        if isinstance(node, Chars):
            if node.max == 0:
                return nxt
            return self._add(("run", _table(node.cls), node.min, node.max, node.soft, nxt))
        if isinstance(node, Seq):
            for part in reversed(node.parts):
                nxt = self._compile(part, nxt)
            return nxt
        if isinstance(node, Alt):
            return self._add(("split", tuple(self._compile(o, nxt) for o in node.options), False))
        if isinstance(node, Opt):
            return self._add(("split", (nxt, self._compile(node.part, nxt)), True))
        if isinstance(node, Items):
            end = self._add(("item_end", node.min, node.max, -1, nxt))
            first = self._add(("item", self._compile(node.item, end)))
            sep = self._compile(Lit(node.sep), first)
            self.states[end] = ("item_end", node.min, node.max, sep, nxt)
            return self._add(("items", first))
        raise TypeError(f"not a format node: {node!r}")

    def _room(self, state: tuple, n: int, finishing: bool) -> bool:
        """Whether a run at count ``n`` may start another character."""
        _, _, lo, hi, soft, _ = state
        if finishing:
            hi = min(hi, lo if soft else max(lo, self.finish_cap))
        return n < hi

    def closure(self, kernel: Kernel, finishing: bool = False) -> frozenset:
        """Every (state, count, pending, items) reachable from ``kernel`` without consuming a byte."""
        key = (kernel, finishing)
        hit = self._closures.get(key)
        if hit is not None:
            return hit
        seen: set[tuple] = set()
        todo = list(kernel)
        while todo:
            item = todo.pop()
            if item in seen:
                continue
            seen.add(item)
            s, n, pending, ctx = item
            state = self.states[s]
            kind = state[0]
            if kind == "split":
                targets = state[1][:1] if state[2] and finishing else state[1]
                todo += [(t, 0, 0, ctx) for t in targets]
            elif kind == "run" and n >= state[2] and pending == 0:
                todo.append((state[5], 0, 0, ctx))
            elif kind == "items":
                todo.append((state[1], 0, 0, (frozenset(), b"", 0)))
            elif kind == "item":
                todo.append((state[1], 0, 0, (ctx[0], b"", ctx[2])))
            elif kind == "item_end":
                done, cur, count = ctx
                k = _item_key(cur)
                if not k or k in done:
                    continue                      # an empty or repeated item: this path is dead
                done, count = done | {k}, count + 1
                _, lo, hi, sep, exit_ = state
                if count < hi and not (finishing and count >= lo):
                    todo.append((sep, 0, 0, (done, b"", count)))
                if count >= lo:
                    todo.append((exit_, 0, 0, None))
        out = frozenset(seen)
        self._closures[key] = out
        return out

    def step(self, kernel: Kernel, byte: int, finishing: bool = False) -> Kernel:
        """The kernel after one byte (empty: the byte leaves the format)."""
        key = (kernel, byte, finishing)
        hit = self._steps.get(key)
        if hit is not None:
            return hit
        out: set[tuple] = set()
        for s, n, pending, ctx in self.closure(kernel, finishing):
            state = self.states[s]
            grown = ctx if ctx is None else (ctx[0], ctx[1] + bytes([byte]), ctx[2])
            if state[0] == "byte" and state[1] == byte:
                out.add((state[2], 0, 0, grown))
            elif state[0] != "run":
                continue
            elif pending:
                if byte in _CONTINUATION:
                    out.add((s, n + 1, pending - 1, grown))
            elif state[1][byte] and _utf8_length(byte) and self._room(state, n, finishing):
                out.add((s, n + 1, _utf8_length(byte) - 1, grown))
        # Drop what leads nowhere (e.g. an item that just ended as a repeat of an earlier one), so that a
        # byte is valid only if the reply can still go on or end after it.
        result = frozenset(e for e in out if self._alive(e, finishing))
        if len(self._steps) < 200_000:   # counted runs make kernels many; the cache only saves time
            self._steps[key] = result
        return result

    def _alive(self, element: tuple, finishing: bool) -> bool:
        for s, n, pending, _ in self.closure(frozenset({element}), finishing):
            state = self.states[s]
            if state[0] in ("byte", "accept") or (state[0] == "run" and (pending or self._room(state, n, finishing))):
                return True
        return False

    def advance(self, kernel: Kernel, data: bytes, finishing: bool = False) -> Kernel:
        """The kernel after ``data`` (empty when some byte leaves the format)."""
        for b in data:
            kernel = self.step(kernel, b, finishing)
            if not kernel:
                break
        return kernel

    def accepting(self, kernel: Kernel, finishing: bool = False) -> bool:
        """Whether the reply may end here."""
        return any(self.states[e[0]][0] == "accept" for e in self.closure(kernel, finishing))

    def next_bytes(self, kernel: Kernel, finishing: bool = False) -> frozenset[int]:
        """The bytes that may come next (empty: only the end may)."""
        out: set[int] = set()
        for s, n, pending, _ in self.closure(kernel, finishing):
            state = self.states[s]
            if state[0] == "byte":
                out.add(state[1])
            elif state[0] == "run" and pending:
                out |= _CONTINUATION
            elif state[0] == "run" and self._room(state, n, finishing):
                out.update(i for i, ok in enumerate(state[1]) if ok and _utf8_length(i))
        return frozenset(out)

    def matches(self, text: str) -> bool:
        """Whether all of ``text`` is in the format."""
        k = self.advance(self.start, text.encode("utf-8"))
        return bool(k) and self.accepting(k)


@lru_cache(maxsize=64)
def _table(cls: CharClass) -> tuple[bool, ...]:
    return tuple(cls.allows(i) for i in range(256))


@lru_cache(maxsize=256)
def _matcher(fmt: Format) -> Matcher:
    return Matcher(fmt)
