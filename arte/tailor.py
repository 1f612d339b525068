"""Tailored training data: the aligned teacher writes the examples students fine-tune on.

Contract: ``tailor_dataset(teacher, task, seeds, config, out_dir, progress)`` writes two files into
``out_dir`` and returns a :class:`TailorResult`:

* ``dataset.jsonl`` — one example per line in the :class:`arte.drafts.Draft` shape
  (``id, question, rationale, answer, question_id, style, task, provenance``); the rationale ends in
  ``<ans>answer</ans>``. The device's SFT reads this format (:func:`arte.drafts.read_drafts` validates it).
* ``messages.jsonl`` — the same examples as chat conversations, ``{"messages": [user, assistant]}``, the
  format TRL's ``SFTTrainer`` and most fine-tuning tools load as is; the turns are exactly what the
  device's SFT trains on (:func:`arte.sft_data.user_message` with the task's instruction,
  :func:`arte.sft_data.assistant_message`).
* ``manifest.json`` — ``format``, ``file``, ``sha256`` and ``size`` (bytes) of the JSONL, ``messages_file``,
  ``n_examples``,
  ``task``, ``teacher``, ``adapter``, ``counts`` (flat ``{reason: n}``, see below), ``labels`` (the kept
  examples' answers, :func:`arte.tasks.label_counts`), ``config``, ``seconds``.

Steps (the paper's §3.3, plus a filter that is ours): questions as in elicitation
(:func:`arte.questions.generate_questions`, T = ``question_temperature``, default 1.0), then one
rationale per question on the plain step-by-step prompt at ``rationale_temperature`` (default 0: greedy).
With ``constrain`` (the default) questions, rationales and check samples are decoded inside the draft
formats (:mod:`arte.formats`: options lines, reasoning of at least ``min_rationale_chars`` bytes ending in
``<ans>`` one of the options ``</ans>``), as in elicitation. An example is kept when:

1. its answer parses and is well-formed (:func:`arte.elicit.check_rationale`: a complete
   ``<ans>…</ans>``, bounded lengths; for multiple-choice questions the answer is one of the question's
   options), and its rationale has at least ``min_rationale_chars`` characters. With
   ``extract_answers`` an untagged reply gets its answer by extraction first, as in elicitation
   (:func:`arte.elicit.extract_answers`), for the kept rationale and the check samples alike;
2. it is *consistent*: each of ``check_samples`` further rationales, sampled on the same prompt at
   ``check_temperature``, ends in the same answer (equal after :func:`arte.answers.normalize_answer`; a
   sample without a parsable answer disagrees). With ``check_samples=0`` step 1 alone decides;
3. its question is not a duplicate of a seed or of another kept question (normalized text), and is within
   the length bounds (both checked while generating questions).

``counts`` keys: ``questions`` (accepted), ``kept``, ``question_prompts``, ``question_prompts_with_questions``
(prompts that gave at least one accepted question), ``rejected/question/<reason>``,
``rejected/example/<reason>`` (``empty``, ``no_answer``, ``answer_too_long``, ``rationale_too_long``,
``rationale_too_short``, ``answer_not_an_option``, ``inconsistent``) and ``repaired/<kind>`` (the question
repairs, and ``answer_extracted``: kept-rationale replies whose answer was extracted), and what the
constraint did: ``constraint/questions/<key>`` and ``constraint/rationales/<key>`` (the keys of
:data:`arte.constrain.COUNT_KEYS`; the rationales' include the check samples).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from arte.answers import normalize_answer, parse_answer
from arte.drafts import Draft
from arte.elicit import check_rationale, rationale_formats, trim_rationale, write_rationales
from arte.errors import ConfigError
from arte.progress import Progress
from arte.prompts import PLAIN_STYLE
from arte.questions import QuestionConfig, generate_questions
from arte.sft_data import assistant_message, user_message
from arte.tasks import Example, Task, label_counts
from arte.teacher import Teacher, teacher_id

__all__ = ["TailorConfig", "TailorResult", "tailor_dataset", "chat_record", "DATASET_FILE", "MESSAGES_FILE",
           "MANIFEST_FILE", "FORMAT"]

DATASET_FILE = "dataset.jsonl"
MANIFEST_FILE = "manifest.json"
MESSAGES_FILE = "messages.jsonl"
FORMAT = "arte-tailored/1"


@dataclass(frozen=True)
class TailorConfig(QuestionConfig):
    """Question settings (see :class:`arte.questions.QuestionConfig`) plus the examples'.

    Args:
        rationale_temperature: sampling of the kept rationale (the paper: 0, greedy).
        rationale_max_new_tokens: reply budget per rationale.
        max_answer_chars, min_rationale_chars, max_rationale_chars: length bounds of a kept example.
        check_samples: further sampled rationales that must agree with the answer (0: no check).
        check_temperature: their sampling temperature.
        extract_answers, answer_max_new_tokens: answer extraction for untagged replies (see
            :class:`arte.elicit.ElicitConfig`).
    """

    rationale_temperature: float = 0.0
    rationale_max_new_tokens: int = 256
    max_answer_chars: int = 200
    min_rationale_chars: int = 20
    max_rationale_chars: int = 4000
    check_samples: int = 1
    check_temperature: float = 0.7
    extract_answers: bool = True
    answer_max_new_tokens: int = 16

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("rationale_max_new_tokens", "max_answer_chars", "max_rationale_chars",
                     "answer_max_new_tokens"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(name, f"must be an integer >= 1, got {v!r}")
        if not 0 <= self.min_rationale_chars <= self.max_rationale_chars:
            raise ConfigError("min_rationale_chars", f"must be in [0, max_rationale_chars], got "
                                                     f"{self.min_rationale_chars}")
        if not 0.0 <= self.rationale_temperature <= 10.0:
            raise ConfigError("rationale_temperature", f"must be in [0, 10], got {self.rationale_temperature}")
        if isinstance(self.check_samples, bool) or not 0 <= self.check_samples <= 16:
            raise ConfigError("check_samples", f"must be an integer in [0, 16], got {self.check_samples!r}")
        if not 0.0 < self.check_temperature <= 10.0:
            raise ConfigError("check_temperature", f"must be in (0, 10], got {self.check_temperature}")


@dataclass
class TailorResult:
    """The written files, the kept examples and the manifest."""

    dataset_path: Path
    manifest_path: Path
    examples: list[Draft]
    manifest: dict[str, Any] = field(default_factory=dict)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def chat_record(task: Task, example: Draft) -> dict[str, Any]:
    """One tailored example as a ``messages`` conversation (the user and assistant turns the student's
    SFT trains on)."""
    return {"messages": [{"role": "user", "content": user_message(task.instruction, example.question)},
                         {"role": "assistant", "content": assistant_message(example)}]}


def tailor_dataset(teacher: Teacher, task: Task, seeds: Sequence[Example], config: TailorConfig = TailorConfig(),
                   out_dir: str | Path = "tailored", progress: Progress | None = None) -> TailorResult:
    """Write a tailored dataset for ``task`` with ``teacher`` (see the module docstring).

    ``progress(stage, done, total)`` is called per teacher call for ``questions``, ``rationales`` and
    ``checks``. Stable entry point: the server's job worker calls it by this name.
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    qres = generate_questions(teacher, task, seeds, config, progress)
    questions = qres.questions
    multiple_choice = bool(seeds) and all(e.is_multiple_choice for e in seeds)
    seed = config.seed + 1_000_000
    extraction = {"extract": config.extract_answers, "answer_max_new_tokens": config.answer_max_new_tokens}
    constrained: dict[str, int] = {}
    formats = (rationale_formats(questions, multiple_choice=multiple_choice, min_chars=config.min_rationale_chars,
                                 max_chars=config.max_rationale_chars, max_answer_chars=config.max_answer_chars)
               if config.constrain else None)
    main, extracted = write_rationales(teacher, task, questions, [PLAIN_STYLE], formats=formats, counts=constrained,
                                       temperature=config.rationale_temperature,
                                       max_new_tokens=config.rationale_max_new_tokens, seed=seed,
                                       batch_size=config.batch_size, top_p=config.top_p, progress=progress,
                                       **extraction)
    rejected: dict[str, int] = {}
    candidates: list[tuple[int, str, str]] = []
    for qi, (q, texts) in enumerate(zip(questions, main)):
        rationale, answer, reason = check_rationale(q.text, texts[0], multiple_choice=multiple_choice,
                                                    max_answer_chars=config.max_answer_chars,
                                                    max_rationale_chars=config.max_rationale_chars)
        if reason is None and len(rationale) < config.min_rationale_chars:
            reason = "rationale_too_short"
        if reason is not None:
            rejected[reason] = rejected.get(reason, 0) + 1
            continue
        candidates.append((qi, rationale, answer))
    agreed = {qi: 0 for qi, _, _ in candidates}
    for k in range(config.check_samples):
        checked = [questions[qi] for qi, _, _ in candidates]
        checked_formats = [formats[qi] for qi, _, _ in candidates] if formats is not None else None
        extra, _ = write_rationales(teacher, task, checked, [PLAIN_STYLE], temperature=config.check_temperature,
                                    formats=checked_formats, counts=constrained,
                                    max_new_tokens=config.rationale_max_new_tokens,
                                    seed=seed + (k + 1) * 100_000, batch_size=config.batch_size,
                                    top_p=config.top_p, progress=progress, stage="checks", **extraction)
        for (qi, _, answer), texts in zip(candidates, extra):
            other = parse_answer(trim_rationale(texts[0]))
            if other is not None and normalize_answer(other) == normalize_answer(answer):
                agreed[qi] += 1
    examples: list[Draft] = []
    for qi, rationale, answer in candidates:
        if agreed[qi] < config.check_samples:
            rejected["inconsistent"] = rejected.get("inconsistent", 0) + 1
            continue
        q = questions[qi]
        start = qi - qi % config.batch_size
        prov = {**q.provenance, **teacher_id(teacher), "rationale_prompt": PLAIN_STYLE,
                "rationale_sampling": {"temperature": config.rationale_temperature, "top_p": config.top_p,
                                       "max_new_tokens": config.rationale_max_new_tokens, "seed": seed + start,
                                       "index": qi - start},
                "consistency": {"samples": config.check_samples, "agreed": agreed[qi],
                                "temperature": config.check_temperature},
                "answer_extracted": (qi, 0) in extracted}
        examples.append(Draft(id=q.id, question=q.text, rationale=rationale, answer=answer, question_id=q.id,
                              style=PLAIN_STYLE, task=task.name, provenance=prov))
    data = "".join(json.dumps(e.to_dict(), ensure_ascii=False) + "\n" for e in examples).encode("utf-8")
    dataset_path, manifest_path = out / DATASET_FILE, out / MANIFEST_FILE
    _atomic_write(dataset_path, data)
    _atomic_write(out / MESSAGES_FILE, "".join(json.dumps(chat_record(task, e), ensure_ascii=False) + "\n"
                                               for e in examples).encode("utf-8"))
    counts: dict[str, int] = {"questions": len(questions), "kept": len(examples), "question_prompts": qres.prompts,
              "question_prompts_with_questions": qres.productive_prompts}
    counts.update({f"rejected/question/{k}": v for k, v in sorted(qres.rejections.items())})
    counts.update({f"rejected/example/{k}": v for k, v in sorted(rejected.items())})
    repairs = {**qres.repairs, **({"answer_extracted": len(extracted)} if extracted else {})}
    counts.update({f"repaired/{k}": v for k, v in sorted(repairs.items())})
    counts.update({f"constraint/questions/{k}": v for k, v in sorted(qres.constraint.items())})
    counts.update({f"constraint/rationales/{k}": v for k, v in sorted(constrained.items())})
    manifest = {"format": FORMAT, "file": DATASET_FILE, "sha256": hashlib.sha256(data).hexdigest(),
                "size": len(data), "messages_file": MESSAGES_FILE, "n_examples": len(examples), "task": task.name,
                **teacher_id(teacher),
                "counts": counts, "labels": label_counts(examples), "config": asdict(config),
                "seconds": round(time.perf_counter() - t0, 3)}
    _atomic_write(manifest_path, json.dumps(manifest, indent=2).encode("utf-8"))
    return TailorResult(dataset_path, manifest_path, examples, manifest)
