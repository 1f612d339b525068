import json
from pathlib import Path

import pytest

from arte.errors import ConfigError, TaskFormatError
from arte.tasks import Example, format_question, load_task, partition, split_task

BIGBENCH_FILES = ["sports_understanding", "date_understanding", "navigate", "object_counting", "word_sorting"]


@pytest.mark.parametrize("name", BIGBENCH_FILES)
def test_loads_every_bigbench_dev_task(bigbench_dir: Path, name: str) -> None:
    task = load_task(bigbench_dir / f"{name}.json")
    raw = json.loads((bigbench_dir / f"{name}.json").read_text())
    assert len(task.examples) == len(raw["examples"])
    assert task.name == raw["name"]
    assert task.instruction
    for ex in task.examples[:50]:
        assert ex.targets and all(t.strip() for t in ex.targets)
        if ex.is_multiple_choice:
            assert set(ex.targets) <= set(ex.choices)


def test_bigbench_details(bigbench_dir: Path) -> None:
    sports = load_task(bigbench_dir / "sports_understanding.json")
    assert sports.kind == "multiple_choice"
    assert sports.input_prefix == "\nStatement: "
    assert sports.instruction.startswith("Determine whether an artificially constructed sentence")
    e = sports.examples[0]
    assert e.choices == ("plausible", "implausible") and e.targets == ("plausible",)
    assert format_question(sports, e) == "Statement: Jamal Murray was perfect from the line\nOptions: plausible, implausible"
    counting = load_task(bigbench_dir / "object_counting.json")
    assert counting.kind == "exact_match"
    assert counting.examples[0].targets == ("three", "3")


def _write(tmp_path: Path, name: str, content: str) -> Path:
    p = tmp_path / name
    p.write_text(content)
    return p


def test_jsonl_both_shapes(tmp_path: Path) -> None:
    p = _write(tmp_path, "t.jsonl", "\n".join([
        json.dumps({"input": "2+2?", "target": "4"}),
        "",
        json.dumps({"input": "Capital of France?", "choices": ["Paris", "Rome"], "answer": "Paris", "id": "q-fr"}),
        json.dumps({"input": "Pick B", "choices": ["A", "B", "C"], "answer": 1}),
        json.dumps({"input": "Either", "target": ["x", "y"]}),
    ]))
    t = load_task(p, description="Toy task")
    assert [e.id for e in t.examples] == ["t:0", "q-fr", "t:2", "t:3"]
    assert t.examples[0] == Example("t:0", "2+2?", ("4",))
    assert t.examples[2].targets == ("B",)
    assert t.examples[3].targets == ("x", "y")
    assert t.kind == "mixed" and t.instruction == "Toy task."


@pytest.mark.parametrize("line, index, field", [
    ({"target": "x"}, 1, "input"),
    ({"input": 3, "target": "x"}, 1, "input"),
    ({"input": "  ", "target": "x"}, 1, "input"),
    ({"input": "q"}, 1, "target"),
    ({"input": "q", "target": []}, 1, "target"),
    ({"input": "q", "target": [1]}, 1, "target"),
    ({"input": "q", "choices": ["a"], "answer": "a"}, 1, "choices"),
    ({"input": "q", "choices": ["a", "a"], "answer": "a"}, 1, "choices"),
    ({"input": "q", "choices": ["a", "b"]}, 1, "answer"),
    ({"input": "q", "choices": ["a", "b"], "answer": "c"}, 1, "answer"),
    ({"input": "q", "choices": ["a", "b"], "answer": 2}, 1, "answer"),
    ({"input": "q", "target_scores": {"a": 0, "b": 0}}, 1, "target_scores"),
    ({"input": "q", "target_scores": {"a": "1", "b": 0}}, 1, "target_scores"),
    ({"input": "q", "target": "x", "id": "t:0"}, 1, "id"),
])
def test_malformed_jsonl_names_file_index_and_field(tmp_path: Path, line: dict, index: int, field: str) -> None:
    p = _write(tmp_path, "t.jsonl", json.dumps({"input": "ok", "target": "y"}) + "\n" + json.dumps(line) + "\n")
    with pytest.raises(TaskFormatError) as ei:
        load_task(p)
    err = ei.value
    assert (err.index, err.field) == (index, field)
    assert str(p) in str(err) and f"example {index}" in str(err) and repr(field) in str(err)


def test_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(TaskFormatError, match="no such file"):
        load_task(tmp_path / "missing.json")
    with pytest.raises(TaskFormatError, match="invalid JSON at line 1"):
        load_task(_write(tmp_path, "bad.json", "{not json"))
    with pytest.raises(TaskFormatError, match="'examples'"):
        load_task(_write(tmp_path, "noex.json", json.dumps({"name": "x", "examples": []})))
    with pytest.raises(TaskFormatError, match="example 0"):
        load_task(_write(tmp_path, "str.json", json.dumps({"examples": ["just a string"]})))
    with pytest.raises(TaskFormatError, match="line 2"):
        load_task(_write(tmp_path, "bad.jsonl", '{"input": "a", "target": "b"}\n{oops\n'))
    with pytest.raises(TaskFormatError, match="empty"):
        load_task(_write(tmp_path, "empty.jsonl", "\n\n"))
    (tmp_path / "latin.json").write_bytes(b'{"examples": [{"input": "caf\xe9", "target": "x"}]}')
    with pytest.raises(TaskFormatError, match="not UTF-8"):
        load_task(tmp_path / "latin.json")


def test_split_is_deterministic_disjoint_and_order_independent(bigbench_dir: Path) -> None:
    task = load_task(bigbench_dir / "navigate.json")
    a = split_task(task, seed=3, n_seeds=3, validation=100, holdout=200)
    b = split_task(task.with_examples(reversed(task.examples)), seed=3, n_seeds=3, validation=100, holdout=200)
    assert a == b
    ids = [e.id for part in (a.seeds, a.validation, a.holdout) for e in part]
    assert len(ids) == len(set(ids)) == 303
    c = split_task(task, seed=4, n_seeds=3, validation=100, holdout=200)
    assert [e.id for e in c.validation] != [e.id for e in a.validation]
    rest = split_task(task, seed=3, n_seeds=0, validation=0.5)
    assert len(rest.validation) == 500 and len(rest.holdout) == 500


def test_split_rejects_impossible_sizes(bigbench_dir: Path) -> None:
    task = load_task(bigbench_dir / "date_understanding.json")
    with pytest.raises(ConfigError, match="holdout"):
        split_task(task, validation=300, holdout=300)
    with pytest.raises(ConfigError, match="n_seeds"):
        split_task(task, n_seeds=10_000)
    with pytest.raises(ConfigError, match="validation"):
        split_task(task, validation=1.5)


def test_partition_is_disjoint_and_covers(bigbench_dir: Path) -> None:
    ex = load_task(bigbench_dir / "sports_understanding.json").examples[:100]
    parts = partition(ex, 3, seed=1)
    assert sorted(len(p) for p in parts) == [33, 33, 34]
    assert sorted(e.id for p in parts for e in p) == sorted(e.id for e in ex)
    assert partition(ex, 3, seed=1) == parts and partition(ex, 3, seed=2) != parts


# -- labels ---------------------------------------------------------------------------------------------------


def _skewed(tmp_path: Path, n_a: int = 30, n_b: int = 10) -> Path:
    """A multiple-choice JSONL sorted by label: all "plausible" items first, then the "implausible" ones."""
    rows = [{"id": f"a{i}", "input": f"statement {i}", "choices": ["plausible", "implausible"], "answer": 0}
            for i in range(n_a)]
    rows += [{"id": f"b{i}", "input": f"claim {i}", "choices": ["plausible", "implausible"], "answer": 1}
             for i in range(n_b)]
    return _write(tmp_path, "skewed.jsonl", "\n".join(json.dumps(r) for r in rows))


def test_label_of_and_label_counts() -> None:
    from arte.drafts import Draft
    from arte.tasks import label_counts, label_of

    mc = Example("m", "q", ("b",), ("a", "b", "c"))
    em = Example("e", "q", (" three ", "3"))
    assert label_of(mc) == "b" and label_of(em) == "three"
    assert label_of(Draft("d", "q", "r <ans>b</ans>", "b")) == "b"
    # most frequent first, ties by label; strings count as labels
    assert label_counts([mc, em, mc, "three", "a"]) == {"b": 2, "three": 2, "a": 1}
    assert list(label_counts(["z", "y", "y"])) == ["y", "z"] and label_counts([]) == {}


def test_validation_is_label_balanced_where_the_data_allow(tmp_path: Path) -> None:
    from arte.tasks import label_counts

    task = load_task(_skewed(tmp_path, 60, 20))
    plain = split_task(task, seed=0, n_seeds=3, validation=12, balanced=False)
    assert label_counts(plain.validation) != {"implausible": 6, "plausible": 6}   # the data fail without it
    for seed in range(5):
        split = split_task(task, seed=seed, n_seeds=3, validation=12)
        assert label_counts(split.validation) == {"implausible": 6, "plausible": 6}
        # every prefix is as balanced as it can be (a device scores on the first max_items)
        for k in range(1, 13):
            c = label_counts(split.validation[:k])
            assert max(c.values()) - min(c.values(), default=0) <= 1 and len(c) == min(k, 2)
        ids = [e.id for part in (split.seeds, split.validation, split.holdout) for e in part]
        assert len(ids) == len(set(ids)) == 80
        assert split.label_counts()["holdout"] == label_counts(split.holdout)


def test_balanced_validation_leaves_the_holdout_every_label(tmp_path: Path) -> None:
    from arte.tasks import label_counts

    # A device's private data, 30 + 10, half for validation: a plain balanced take would be 10 + 10 and
    # leave the holdout (the before/after evaluation) without a single "implausible" item.
    split = split_task(load_task(_skewed(tmp_path, 30, 10)), seed=0, n_seeds=0, validation=0.5)
    assert label_counts(split.validation) == {"plausible": 15, "implausible": 5}
    assert label_counts(split.holdout) == {"plausible": 15, "implausible": 5}
    assert label_counts(split.validation[:10]) == {"implausible": 5, "plausible": 5}   # the scored prefix
    # the rare label gives the validation at most half of its items, the other label fills the rest
    few = split_task(load_task(_skewed(tmp_path, 30, 4)), seed=0, n_seeds=0, validation=12)
    assert label_counts(few.validation) == {"plausible": 10, "implausible": 2}
    assert label_counts(few.holdout) == {"plausible": 20, "implausible": 2}
    # labels of one item each (exact match with distinct answers) still fill the validation
    rows = [{"id": f"e{i}", "input": f"{i}+0?", "target": str(i)} for i in range(10)]
    em = load_task(_write(tmp_path, "em.jsonl", "\n".join(json.dumps(r) for r in rows)))
    assert len(split_task(em, n_seeds=0, validation=4).validation) == 4


def test_a_label_copying_student_cannot_score_drafts_by_their_label(tmp_path: Path) -> None:
    from arte.drafts import Draft
    from arte.scoring import ScoringConfig, score_drafts
    from tests.support.fakes import CopyingStudent

    task = load_task(_skewed(tmp_path, 60, 20), description="Is the statement plausible?")
    drafts = [Draft("d-p", "Statement: x\nOptions: plausible, implausible", "r <ans>plausible</ans>", "plausible"),
              Draft("d-i", "Statement: y\nOptions: plausible, implausible", "r <ans>implausible</ans>", "implausible")]

    def scores(split):
        res = score_drafts(CopyingStudent(), task, drafts, split.validation, ScoringConfig(mode="generate"))
        return {s.draft_id: s.n_correct for s in res.scores}

    unbalanced = scores(split_task(task, seed=0, n_seeds=0, validation=12, balanced=False))
    assert unbalanced["d-p"] > unbalanced["d-i"]    # without balance, the label alone decides
    for seed in range(3):
        balanced = scores(split_task(task, seed=seed, n_seeds=0, validation=12))
        assert balanced["d-p"] == balanced["d-i"] == 6


def test_balanced_order_is_deterministic_and_order_free(tmp_path: Path) -> None:
    from arte.tasks import balanced_order

    ex = load_task(_skewed(tmp_path)).examples
    a = balanced_order(ex, 1)
    assert a == balanced_order(tuple(reversed(ex)), 1) and sorted(e.id for e in a) == sorted(e.id for e in ex)
    assert [e.answer for e in a[:20]] in (["plausible", "implausible"] * 10, ["implausible", "plausible"] * 10)
    assert balanced_order(ex, 2) != a


def test_partition_is_stratified_by_label(tmp_path: Path) -> None:
    from arte.tasks import label_counts

    ex = load_task(_skewed(tmp_path, 8, 4)).examples   # sorted by label
    for seed in range(4):
        parts = partition(ex, 4, seed=seed)
        assert [label_counts(p) for p in parts] == [{"plausible": 2, "implausible": 1}] * 4


def test_the_seed_pool_is_label_stratified(tmp_path: Path) -> None:
    """60 plausible / 20 implausible: a hash-rank draw of 4 seeds is one-label for some split seeds (as the
    three sports seeds of split seed 0 once were), so every question prompt showed one label. The pool
    takes the labels in turn."""
    from arte.tasks import _rank, label_counts

    task = load_task(_skewed(tmp_path, 60, 20))
    ranked_draws = [label_counts(_rank(task.examples, seed)[:4]) for seed in range(20)]
    assert any(len(c) == 1 for c in ranked_draws)   # the data fail without the fix
    for seed in range(20):
        split = split_task(task, seed=seed, n_seeds=4, validation=12)
        assert label_counts(split.seeds) == {"implausible": 2, "plausible": 2}
        ids = [e.id for part in (split.seeds, split.validation, split.holdout) for e in part]
        assert len(ids) == len(set(ids)) == 80
