"""The alignment self-test end to end on a fake teacher whose "alignment" moves it toward what its pairs'
chosen sides have: planted → lift up, reversed → down, null → an interval that contains 0; files, JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from arte.elicit import ElicitConfig
from arte.errors import ConfigError
from arte.pairs import read_pairs
from arte.planted import PlantedRule
from arte.selftest import SelftestConfig, alignment_selftest
from tests.support.teacher_fakes import (
    PARITY_LONG,
    PARITY_SHORT,
    PARITY_STEPS,
    PARITY_TASK,
    ScriptedTeacher,
    fake_align,
    is_question_prompt,
    parity_teacher,
)

CONFIG = SelftestConfig(rules=("short", "steps"), max_words=20, n_items=20, n_heldout=16, sample_seeds=4,
                        n_boot=500, elicit=ElicitConfig(n_questions=30, rationale_temperature=1.0, constrain=False))


def test_planted_moves_up_reversed_down_null_stays(tmp_path: Path) -> None:
    stages: set[str] = set()
    res = alignment_selftest(PARITY_TASK, CONFIG, tmp_path, open_teacher=parity_teacher, align_pairs=fake_align,
                             progress=lambda s, d, t: stages.add(s))
    by = {v.rule.name: v for v in res.variants}
    assert list(by) == ["short", "steps", "short-reversed", "short-null"]
    for name in ("short", "steps"):
        v = by[name]
        assert v.outcome == "pairs" and v.pairs["chosen_holds"] > v.pairs["rejected_holds"]
        assert v.lift["low"] > 0 and v.aligned_rate > v.original_rate and v.passed
    rev = by["short-reversed"]
    assert rev.pairs["chosen_holds"] < rev.pairs["rejected_holds"] and rev.lift["estimate"] < 0 and rev.passed
    null = by["short-null"]
    assert null.lift is None or null.lift["low"] <= 0 <= null.lift["high"]
    assert res.thresholds == {"max_words": 20, "answer_chars": res.thresholds["answer_chars"]}
    assert by["short"].heldout_reward_accuracy == 1.0
    # the real files: drafts, each variant's scores (planted mode, per-item outcomes) and pairs
    assert (tmp_path / "drafts.jsonl").is_file()
    doc = json.loads((tmp_path / "short" / "scores.json").read_text())
    assert doc["mode"] == "planted" and len(doc["scores"][0]["outcomes"]) == 20
    assert all(p.kind == "rationale" for p in read_pairs(tmp_path / "short" / "pairs.jsonl"))
    assert {"questions", "original/rationales", "aligned short/rationales", "align short/train"} <= stages
    json.dumps(res.to_dict())   # JSON-ready
    assert res.to_dict()["verdict"] in ("pass", "fail")


def test_a_question_rule_moves_the_questions(tmp_path: Path) -> None:
    cfg = SelftestConfig(rules=("quantity",), n_items=20, n_heldout=8, sample_seeds=3, n_boot=500,
                         elicit=ElicitConfig(n_questions=60, styles=("plain", "expert"), rationale_temperature=1.0,
                                             constrain=False))
    res = alignment_selftest(PARITY_TASK, cfg, tmp_path, open_teacher=parity_teacher, align_pairs=fake_align)
    by = {v.rule.name: v for v in res.variants}
    assert by["quantity"].pairs["question"] > 0 and by["quantity"].pairs["rationale"] == 0
    assert by["quantity"].lift["low"] > 0 and by["quantity-reversed"].lift["estimate"] < 0


def test_thresholds_default_to_the_original_median(tmp_path: Path) -> None:
    cfg = SelftestConfig(rules=("short",), n_items=10, n_heldout=6, sample_seeds=2, n_boot=200,
                         elicit=ElicitConfig(n_questions=10, rationale_temperature=1.0, constrain=False))
    res = alignment_selftest(PARITY_TASK, cfg, tmp_path, open_teacher=parity_teacher, align_pairs=fake_align)
    words = sorted([len(PARITY_SHORT.split("<ans>")[0].split()), len(PARITY_LONG.split("<ans>")[0].split()),
                    len(PARITY_STEPS.split("<ans>")[0].split())])
    assert res.thresholds["max_words"] in words or words[0] <= res.thresholds["max_words"] <= words[-1]


def test_a_scorer_without_signal_is_reported_not_aligned(tmp_path: Path) -> None:
    calls = []

    def tie(drafts: Any, rule: PlantedRule, rng: Any) -> dict:
        return {d.id: (10.0, 5.0) for d in drafts}    # every draft scores the same: no pair

    def never(*a: Any) -> dict:
        calls.append(a)
        raise AssertionError("no pairs: nothing to align")

    cfg = SelftestConfig(rules=("short",), n_heldout=4, sample_seeds=1, n_boot=200,
                         elicit=ElicitConfig(n_questions=5, rationale_temperature=1.0, constrain=False))
    res = alignment_selftest(PARITY_TASK, cfg, tmp_path, open_teacher=parity_teacher, align_pairs=never, scorer=tie)
    assert all(v.outcome == "no_signal" and v.lift is None for v in res.variants)
    assert [v.passed for v in res.variants] == [None, None, True]   # a null rule that moves nothing passes
    assert res.verdict() == "fail" and not calls


@pytest.mark.parametrize("kw, field", [({"rules": ()}, "rules"), ({"rules": ("short", "short")}, "rules"),
                                       ({"n_heldout": 0}, "n_heldout"), ({"strength": 2.0}, "strength")])
def test_config_errors(kw: dict, field: str) -> None:
    with pytest.raises(ConfigError) as e:
        SelftestConfig(**kw)
    assert e.value.field == field


def test_too_few_examples_for_the_heldout_questions(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        alignment_selftest(PARITY_TASK, SelftestConfig(n_heldout=100), tmp_path, open_teacher=parity_teacher,
                           align_pairs=fake_align)
    assert e.value.field == "n_heldout"


def test_table_plot_and_help(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from arte_cli.cli import main
    from arte_cli.selftest import plot_rates, table

    res = alignment_selftest(PARITY_TASK, CONFIG, tmp_path, open_teacher=parity_teacher, align_pairs=fake_align)
    doc = res.to_dict()
    text = table(doc)
    assert all(name in text for name in ("short", "steps", "short-reversed", "short-null"))
    assert f"verdict: {doc['verdict'].upper()}" in text
    png = plot_rates(doc, tmp_path / "rates.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    help_text = CliRunner().invoke(main, ["selftest", "alignment", "--help"]).output
    assert "PASS means" in help_text and "does NOT show that students" in help_text.replace("\n", " ")


def test_reused_drafts_skip_elicitation(tmp_path: Path) -> None:
    from arte.drafts import read_drafts
    from arte.selftest import prepare

    first = alignment_selftest(PARITY_TASK, CONFIG, tmp_path / "a", open_teacher=parity_teacher, align_pairs=fake_align)
    drafts = read_drafts(tmp_path / "a" / "drafts.jsonl")
    calls: list[ScriptedTeacher] = []

    def counting(adapter: Path | None) -> ScriptedTeacher:
        t = parity_teacher(adapter)
        calls.append(t)
        return t

    prep = prepare(PARITY_TASK, CONFIG, tmp_path / "b", open_teacher=counting, drafts=drafts)
    assert prep.drafts == drafts and prep.drafts_summary["questions"] == first.drafts["questions"]
    assert all(not is_question_prompt(c["conversations"][0]) for t in calls for c in t.calls)
    assert prep.thresholds == first.thresholds
