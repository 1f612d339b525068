"""The aggregation function: items-weighted per-draft scores, k, float (noised) counts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.aggregation import ScoreRow, aggregate


def test_weighted_by_items_not_by_device() -> None:
    rows = [ScoreRow("a", "d0", 10, 9), ScoreRow("b", "d0", 90, 9), ScoreRow("a", "d1", 4, 1)]
    agg = aggregate(rows, min_devices=2)
    assert agg.drafts["d0"].score == pytest.approx(18 / 100)  # not the device mean (0.5 + 0.1) / 2
    assert agg.drafts["d0"].n_devices == 2 and agg.drafts["d1"].n_devices == 1
    assert agg.n_devices == 2 and agg.meets_k
    assert list(agg.scores()) == ["d0", "d1"]


def test_k_counts_distinct_devices() -> None:
    rows = [ScoreRow("a", f"d{i}", 5, 2) for i in range(5)]
    agg = aggregate(rows, min_devices=2)
    assert agg.n_devices == 1 and not agg.meets_k
    with pytest.raises(ValueError, match="min_devices"):
        aggregate(rows, min_devices=0)


def test_noised_counts_are_summed_then_clipped() -> None:
    rows = [ScoreRow("a", "d0", 9.5, 10.7), ScoreRow("b", "d0", 10.1, 9.9), ScoreRow("a", "d1", -0.4, 0.2)]
    agg = aggregate(rows, min_devices=1)
    assert agg.drafts["d0"].n_correct == pytest.approx(20.6) and agg.drafts["d0"].score == 1.0
    assert agg.drafts["d1"].score is None  # no positive item estimate: no score


def test_empty_round() -> None:
    agg = aggregate([], min_devices=1)
    assert agg.n_devices == 0 and agg.drafts == {} and not agg.meets_k


@given(
    st.lists(
        st.tuples(
            st.sampled_from("abc"), st.sampled_from(["d0", "d1"]), st.integers(0, 50), st.integers(0, 50)
        ),
        max_size=20,
    )
)
def test_exact_counts_give_the_pooled_accuracy(raw) -> None:
    rows = [ScoreRow(dev, d, n, min(c, n)) for dev, d, n, c in raw]
    agg = aggregate(rows, min_devices=1)
    for draft, a in agg.drafts.items():
        n = sum(r.n_items for r in rows if r.draft_id == draft)
        c = sum(r.n_correct for r in rows if r.draft_id == draft)
        assert a.score == (None if n == 0 else pytest.approx(c / n))
        assert 0.0 <= (a.score or 0.0) <= 1.0
