"""The two-level bootstrap of arte.stats: known cases, scaling with n, reproducibility, and coverage measured
on simulated experiments whose true mean is known."""

from __future__ import annotations

import numpy as np
import pytest

from arte.errors import ConfigError
from arte.stats import as_matrix, bootstrap_ci


def test_ci_of_a_constant_is_a_point() -> None:
    ci = bootstrap_ci(np.ones((3, 40)))
    assert ci.estimate == ci.low == ci.high == 1.0 and ci.width == 0.0 and ci.se == 0.0
    zero = bootstrap_ci([[0.0] * 10])
    assert zero.low == zero.high == 0.0


def test_difference_of_identical_single_runs_is_exactly_zero() -> None:
    """Paired items: the same item draw for both conditions cancels every item exactly."""
    rng = np.random.default_rng(1)
    a = rng.integers(0, 2, size=(1, 50))
    ci = bootstrap_ci(a, a.copy())
    assert ci.estimate == ci.low == ci.high == 0.0


def test_a_constant_shift_is_recovered_exactly() -> None:
    rng = np.random.default_rng(2)
    b = rng.random((1, 30))
    ci = bootstrap_ci(b + 0.25, b)
    assert ci.low == pytest.approx(0.25) and ci.high == pytest.approx(0.25)


def test_estimate_is_the_mean_and_the_interval_brackets_it() -> None:
    a = np.array([[1, 0, 1, 1, 0, 1, 0, 1], [1, 1, 1, 0, 0, 1, 0, 1], [0, 0, 1, 1, 0, 1, 0, 1]])
    ci = bootstrap_ci(a)
    assert ci.estimate == pytest.approx(a.mean())
    assert ci.low < ci.estimate < ci.high and ci.n_seeds == 3 and ci.n_items == 8 and ci.n_seeds_b is None
    assert 0.0 <= ci.low and ci.high <= 1.0


def test_single_seed_matches_the_binomial_standard_error() -> None:
    """With one row only items are resampled: the bootstrap SE of a mean of 0/1 items is sqrt(p(1-p)/n)."""
    rng = np.random.default_rng(3)
    a = (rng.random(400) < 0.3).astype(float)
    ci = bootstrap_ci(a, n_boot=4000)
    p = a.mean()
    assert ci.se == pytest.approx(np.sqrt(p * (1 - p) / 400), rel=0.08)
    assert ci.width == pytest.approx(2 * 1.96 * np.sqrt(p * (1 - p) / 400), rel=0.12)


def test_width_shrinks_like_one_over_sqrt_n() -> None:
    rng = np.random.default_rng(4)
    small = (rng.random((3, 100)) < 0.5).astype(float)
    large = (rng.random((3, 1600)) < 0.5).astype(float)
    ratio = bootstrap_ci(small, n_boot=4000).width / bootstrap_ci(large, n_boot=4000).width
    assert ratio == pytest.approx(4.0, rel=0.2)   # 16x the items: a quarter of the width


def test_seeded_reproducibility() -> None:
    rng = np.random.default_rng(5)
    a, b = rng.random((3, 60)), rng.random((3, 60))
    assert bootstrap_ci(a, b, seed=7) == bootstrap_ci(a, b, seed=7)
    assert bootstrap_ci(a, b, seed=7) != bootstrap_ci(a, b, seed=8)


def test_pairing_narrows_the_difference_of_correlated_conditions() -> None:
    """Two conditions that agree on most items: the paired interval is far narrower than two unpaired ones
    combined (sqrt of the sum of squared half-widths)."""
    rng = np.random.default_rng(6)
    base = (rng.random(200) < 0.5).astype(float)
    flip = rng.random(200) < 0.1
    other = np.where(flip, 1 - base, base)
    paired = bootstrap_ci(other, base)
    unpaired = np.hypot(bootstrap_ci(other).width, bootstrap_ci(base).width)
    assert paired.width < 0.6 * unpaired


def test_seed_variation_widens_the_interval() -> None:
    """Rows that differ by a seed offset: resampling rows adds that spread, so the interval is wider than
    the item-only interval of the averaged row."""
    rng = np.random.default_rng(7)
    items = rng.random(200)
    runs = np.stack([items + off for off in (-0.2, 0.0, 0.2, -0.1, 0.1)])
    both = bootstrap_ci(runs)
    items_only = bootstrap_ci(runs.mean(axis=0))
    assert both.width > 1.5 * items_only.width


def _coverage(simulate, truth: float, trials: int = 300) -> float:
    hits = 0
    for t in range(trials):
        hits += bootstrap_ci(simulate(np.random.default_rng(1000 + t)), n_boot=1000, seed=t).contains(truth)
    return hits / trials


def test_coverage_over_items() -> None:
    """One seed, 120 Bernoulli(0.3) items: the 95% interval covers 0.3 in about 95% of experiments."""
    cov = _coverage(lambda rng: (rng.random(120) < 0.3).astype(float), 0.3)
    assert 0.91 <= cov <= 0.99


def test_coverage_over_items_and_seeds() -> None:
    """Items with their own difficulty, each seed shifts every item's chance: the interval of the two-level
    bootstrap covers the population mean (0.5) at least nominally (it is conservative by construction)."""
    def simulate(rng: np.random.Generator) -> np.ndarray:
        difficulty = rng.uniform(0.2, 0.8, size=150)
        shift = rng.normal(0.0, 0.05, size=(10, 1))
        return (rng.random((10, 150)) < np.clip(difficulty + shift, 0, 1)).astype(float)

    assert 0.92 <= _coverage(simulate, 0.5, trials=200) <= 1.0


def test_difference_coverage() -> None:
    """Two conditions on the same items, the second 0.1 better on average, 3 seeds each."""
    def simulate(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        p = rng.uniform(0.2, 0.7, size=150)
        a = (rng.random((3, 150)) < p + 0.1).astype(float)
        b = (rng.random((3, 150)) < p).astype(float)
        return a, b

    hits = 0
    for t in range(200):
        a, b = simulate(np.random.default_rng(2000 + t))
        hits += bootstrap_ci(a, b, n_boot=1000, seed=t).contains(0.1)
    assert 0.91 <= hits / 200 <= 1.0


def test_errors_name_the_argument() -> None:
    with pytest.raises(ConfigError, match="b"):
        bootstrap_ci(np.ones((2, 5)), np.ones((2, 6)))
    with pytest.raises(ConfigError, match="n_boot"):
        bootstrap_ci(np.ones(5), n_boot=10)
    with pytest.raises(ConfigError, match="level"):
        bootstrap_ci(np.ones(5), level=1.0)
    with pytest.raises(ConfigError, match="outcomes"):
        as_matrix([])
    with pytest.raises(ConfigError, match="a"):
        bootstrap_ci([[1, 0], [1]])
    with pytest.raises(ConfigError, match="finite"):
        bootstrap_ci([1.0, float("nan")])


def _grouped(rng: np.random.Generator, effects: list[float], rows: int, items: int, noise: float = 0.02
             ) -> tuple[np.ndarray, list[int]]:
    """Rows of teacher seed g score ``effects[g]`` on every item, plus a little SFT-seed noise."""
    m = np.vstack([np.full((rows, items), e) + rng.normal(0, noise, size=(rows, items)) for e in effects])
    return m, [g for g in range(len(effects)) for _ in range(rows)]


def test_teacher_seed_groups_widen_the_interval_by_their_spread() -> None:
    """Two teacher seeds far apart, five SFT runs each: treated as ten independent runs the interval is
    too narrow; as two groups it covers the teacher-seed spread."""
    rng = np.random.default_rng(4)
    m, groups = _grouped(rng, [0.3, 0.7], rows=5, items=40)
    flat = bootstrap_ci(m, n_boot=4000)
    nested = bootstrap_ci(m, n_boot=4000, groups_a=groups)
    assert nested.estimate == flat.estimate == pytest.approx(0.5, abs=0.01)
    assert nested.se > 1.8 * flat.se and nested.width > 1.4 * flat.width   # se ratio ~ sqrt(10 runs / 2 groups)
    assert nested.n_groups == 2 and flat.n_groups is None and nested.n_seeds == 10
    # a resample can draw the same teacher seed twice: the interval reaches the groups' own means
    assert nested.low < 0.35 and nested.high > 0.65


def test_conditions_made_from_the_same_teacher_seeds_share_the_group_draw() -> None:
    """ARTE and Original Teacher trained on data of the same teacher seeds carry the same teacher-seed
    effect: paired on the groups, the difference is sharp; with unrelated groups it is not."""
    rng = np.random.default_rng(5)
    b, groups = _grouped(rng, [0.3, 0.7], rows=3, items=40)
    a = b + 0.1 + rng.normal(0, 0.01, size=b.shape)
    paired = bootstrap_ci(a, b, n_boot=2000, groups_a=groups, groups_b=groups)
    unpaired = bootstrap_ci(a, b, n_boot=2000, groups_a=groups, groups_b=[g + 10 for g in groups])
    assert paired.low > 0.05 and paired.high < 0.15 and paired.n_groups == paired.n_groups_b == 2
    assert unpaired.width > 4 * paired.width


def test_groups_are_one_per_row() -> None:
    with pytest.raises(ConfigError) as e:
        bootstrap_ci(np.ones((3, 5)), groups_a=[0, 1])
    assert e.value.field == "groups_a"
    with pytest.raises(ConfigError) as e:
        bootstrap_ci(np.ones((3, 5)), np.ones((2, 5)), groups_a=[0, 0, 1], groups_b=[0])
    assert e.value.field == "groups_b"


def test_groups_of_one_row_each_are_the_one_level_bootstrap_in_distribution() -> None:
    rng = np.random.default_rng(6)
    m = (rng.random((6, 50)) < 0.5).astype(float)
    flat = bootstrap_ci(m, n_boot=4000)
    each = bootstrap_ci(m, n_boot=4000, groups_a=list(range(6)))
    assert each.estimate == flat.estimate and each.se == pytest.approx(flat.se, rel=0.1)
