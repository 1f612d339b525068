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
