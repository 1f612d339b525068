"""Confidence intervals for accuracies measured over items and seeds: a two-level bootstrap, three-level
when the seed runs are grouped by teacher seed (pure numpy).

Contract: an experiment's outcomes for one condition are a 0/1 (or any real) matrix ``outcomes[seed, item]``:
one row per training seed, one column per evaluation item, the same items in every row. A condition without
a seed (e.g. the untuned student, evaluated deterministically) is a single row.

``bootstrap_ci(a)`` estimates the mean of ``a`` and a percentile interval for it; ``bootstrap_ci(a, b)`` the
paired difference ``mean(a) - mean(b)`` for two conditions evaluated on the same items. Each bootstrap
replicate

1. draws ``n_items`` item indices with replacement, **shared** by ``a`` and ``b`` (the items are paired:
   an item that is hard for one condition tends to be hard for the other, and sharing the draw removes that
   variance from the difference);
2. draws, independently for ``a`` and for ``b``, as many seed rows as each has, with replacement (seed ``s``
   of one condition is a different training run from seed ``s`` of the other, so rows are not paired);
3. takes the mean over the drawn rows and columns (difference of means for two conditions).

The interval is the ``(1 - level) / 2`` and ``(1 + level) / 2`` percentiles of the replicates (the plain
percentile bootstrap). Both levels are resampled, so the interval covers the variation of a new set of
items *and* of new training runs; resampling rows that already contain item noise counts part of the
item variance twice, which makes the interval slightly conservative (wider), never narrower. With few
seeds (e.g. 3) the seed level is estimated roughly: read the interval as approximate.

**Groups of rows (a third level).** ``groups_a`` (``groups_b``) names, per row, the unit it belongs to above
the training seed: in the experiment, the teacher-sampling seed whose teacher data the run trained on. Then
step 2 is hierarchical: draw as many groups as there are, with replacement, and within each drawn group as
many of its rows as it has, with replacement (each draw of a group takes its own within-group draw). When
``a`` and ``b`` have the same set of groups (two conditions trained on data of the same teacher seeds,
e.g. ARTE and the Original Teacher made from the same drafts) the group draw is **shared**, as the items
are: the teacher seed is paired across the two conditions; the rows within it are not. Without groups the
rows are resampled in one level, as in step 2. The estimate is the mean over rows. With two groups half
the replicates draw the same group twice, so the interval spans the groups' spread; with so few groups its
coverage is approximate.

Replicates are computed with draw counts instead of resampled copies: the mean of the resampled matrix
is ``w_seed @ a @ w_item / (n_seeds * n_items)`` with ``w`` the number of times each row and column was
drawn (with groups, ``w`` of a row is the number of times it was drawn across its group's draws, and the
denominator the total rows drawn), so ``n_boot`` replicates cost one ``einsum``. Deterministic for a given
``seed``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from arte.errors import ConfigError

__all__ = ["Interval", "bootstrap_ci", "as_matrix"]


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap interval and standard error (the replicates' std).
    ``n_seeds`` counts the rows of ``a``; ``n_seeds_b`` those of ``b`` for a difference (else None);
    ``n_groups`` (``n_groups_b``) the groups of rows when given (teacher seeds), else None."""

    estimate: float
    low: float
    high: float
    level: float
    se: float
    n_items: int
    n_seeds: int
    n_boot: int
    n_seeds_b: int | None = None
    n_groups: int | None = None
    n_groups_b: int | None = None

    @property
    def width(self) -> float:
        return self.high - self.low

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def as_matrix(outcomes: Sequence[Sequence[float]] | np.ndarray, name: str = "outcomes") -> np.ndarray:
    """``outcomes`` as a 2-D float array (seeds × items); a 1-D sequence is one seed. Raises
    :class:`ConfigError` naming ``name`` when it is empty, ragged or not finite."""
    try:
        m = np.asarray(outcomes, dtype=float)
    except ValueError:
        raise ConfigError(name, "rows must all have the same number of items") from None
    if m.ndim == 1:
        m = m[None, :]
    if m.ndim != 2 or m.shape[0] < 1 or m.shape[1] < 1:
        raise ConfigError(name, f"expected a non-empty seeds x items matrix, got shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise ConfigError(name, "contains values that are not finite numbers")
    return m


def _counts(rng: np.random.Generator, n: int, n_boot: int) -> np.ndarray:
    """How often each of ``n`` units is drawn in each of ``n_boot`` resamples of size ``n``."""
    idx = rng.integers(0, n, size=(n_boot, n)) + np.arange(n_boot)[:, None] * n
    return np.bincount(idx.ravel(), minlength=n_boot * n).reshape(n_boot, n).astype(float)


def _group_index(groups: Sequence[Any] | None, n_rows: int, name: str) -> list[Any] | None:
    if groups is None:
        return None
    g = list(groups)
    if len(g) != n_rows:
        raise ConfigError(name, f"need one group per row ({n_rows}), got {len(g)}")
    return g


def _row_weights(rng: np.random.Generator, n_rows: int, groups: list[Any] | None, n_boot: int,
                 group_counts: dict[Any, np.ndarray] | None) -> np.ndarray:
    """``n_boot × n_rows`` draw counts of the rows: one level without groups; with groups, each group drawn
    ``group_counts[g]`` times (shared with the other condition when given) and, per draw, its rows."""
    if groups is None:
        return _counts(rng, n_rows, n_boot)
    labels = list(dict.fromkeys(groups))
    if group_counts is None:
        c = _counts(rng, len(labels), n_boot)
        group_counts = {g: c[:, i] for i, g in enumerate(labels)}
    w = np.zeros((n_boot, n_rows))
    for g in labels:
        rows = [i for i, x in enumerate(groups) if x == g]
        draws = (group_counts[g] * len(rows)).astype(np.int64)   # each draw of g resamples its rows anew
        w[:, rows] = rng.multinomial(draws, np.full(len(rows), 1.0 / len(rows)))
    return w


def bootstrap_ci(a: Sequence[Sequence[float]] | np.ndarray, b: Sequence[Sequence[float]] | np.ndarray | None = None,
                 *, n_boot: int = 2000, level: float = 0.95, seed: int = 0, groups_a: Sequence[Any] | None = None,
                 groups_b: Sequence[Any] | None = None) -> Interval:
    """Mean of ``a`` (or paired difference ``mean(a) - mean(b)``) with a bootstrap interval over items and
    seed rows, and over groups of rows when ``groups_a``/``groups_b`` name them (see the module
    docstring). ``a`` and ``b`` are seeds × items matrices over the same items (1-D: one seed)."""
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 100:
        raise ConfigError("n_boot", f"must be an integer >= 100, got {n_boot!r}")
    if not 0.0 < level < 1.0:
        raise ConfigError("level", f"must be in (0, 1), got {level}")
    ma = as_matrix(a, "a")
    mb = as_matrix(b, "b") if b is not None else None
    if mb is not None and mb.shape[1] != ma.shape[1]:
        raise ConfigError("b", f"paired conditions need the same items: {ma.shape[1]} vs {mb.shape[1]}")
    ga = _group_index(groups_a, ma.shape[0], "groups_a")
    gb = _group_index(groups_b, mb.shape[0], "groups_b") if mb is not None else None
    rng = np.random.default_rng(seed)
    n_items = ma.shape[1]
    w_item = _counts(rng, n_items, n_boot)
    shared = None
    if ga is not None and gb is not None and set(ga) == set(gb):   # paired groups: one draw for both
        labels = list(dict.fromkeys(ga))
        c = _counts(rng, len(labels), n_boot)
        shared = {g: c[:, i] for i, g in enumerate(labels)}

    def resampled_means(m: np.ndarray, groups: list[Any] | None) -> np.ndarray:
        w_seed = _row_weights(rng, m.shape[0], groups, n_boot, shared if groups is not None else None)
        return np.einsum("bs,si,bi->b", w_seed, m, w_item) / (w_seed.sum(axis=1) * n_items)

    reps = resampled_means(ma, ga)
    estimate = float(ma.mean())
    if mb is not None:
        reps = reps - resampled_means(mb, gb)
        estimate -= float(mb.mean())
    lo, hi = np.quantile(reps, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    # a constant's replicates are all equal; rounding in einsum must not open an interval of 1e-17
    if np.ptp(reps) <= 1e-12 * max(1.0, abs(estimate)):
        lo = hi = estimate
    return Interval(estimate, float(lo), float(hi), level, float(reps.std(ddof=1)), n_items, ma.shape[0], n_boot,
                    None if mb is None else mb.shape[0], None if ga is None else len(set(ga)),
                    None if gb is None else len(set(gb)))
