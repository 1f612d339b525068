"""The agent's work loop: score the round's drafts, report, fetch the tailored dataset, train, report metrics.

Contract: :func:`run_once` does one iteration against the server and returns what it did;
:func:`run_forever` repeats it, polling with exponential backoff while there is nothing to do. Every step's
outcome is written to the step journal (:mod:`edge_agent.state`) before the next step starts, so an agent
killed at any point resumes where it was and never reports twice:

* ``round:<id>``   ``drafts`` (saved to the state dir) -> ``queued`` (report + privacy charge + journal in
  ONE transaction; the outbox delivers it) or ``skipped`` (with the reason);

A device scores a question's rationales together, on the same items: when the round has more drafts than
the profile's ``max_drafts``, it samples whole questions (:func:`sample_by_question`), never single drafts,
and when its time budget stops scoring inside a question, that question's scores are left out of the
report. The server compares the rationales of a question only when the same devices scored them.
* ``dataset:<id>`` ``downloaded`` (verified) -> ``trained`` (adapter recorded, kept if better, metrics
  queued, in one transaction) or ``failed`` after :data:`MAX_TRAIN_FAILURES` failures.

Compute steps (scoring, training) run only when the profile's ``[when]`` rules allow; network steps
(delivery, downloads) always run. Only scores leave the device: the report carries per draft ``n_items``
and ``n_correct``; the private data path is read from the settings and never sent.

The train step is one call, :data:`TrainStep` (:func:`edge_agent.train_step.train_step` by default), so
tests and other trainers plug in without touching the loop.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from arte.drafts import draft_from_dict, read_drafts, write_drafts
from arte.errors import ArteError
from arte.scoring import ScoringConfig, score_drafts
from arte.tasks import label_counts, label_of, load_task, split_task
from arte.wire import Metrics, Report, RoundInfo, to_wire
from edge_agent.client import ServerClient
from edge_agent.download import download_dataset, verify_file
from edge_agent.errors import AgentError, AuthError, BudgetError, NetworkError, StateError, TrainingError
from edge_agent.hardware import Hardware, work_blockers
from edge_agent.items import items_for_round, learn_from_round
from edge_agent.privacy import private_scores
from edge_agent.state import State
from edge_agent.sync import deliver, queue_metrics, queue_report
from edge_agent.train_step import TrainingIncomplete, TrainRequest, TrainResult
from firmware_profiles import Profile

__all__ = ["Agent", "Iteration", "run_once", "run_forever", "sample_by_question", "TrainStep", "MAX_TRAIN_FAILURES"]

log = logging.getLogger(__name__)
MAX_TRAIN_FAILURES = 3
TrainStep = Callable[[TrainRequest], TrainResult]


@dataclass
class Agent:
    """Everything one iteration needs. ``open_student(profile, adapter_path)`` returns a
    :class:`arte.student.Student`; ``detect()`` the current :class:`Hardware`; ``clock()`` seconds (for the
    time budgets)."""

    state: State
    client: ServerClient
    profile: Profile
    open_student: Callable[[Profile, str | None], Any]
    train: TrainStep
    detect: Callable[[], Hardware]
    clock: Callable[[], float] = time.monotonic
    ignore_conditions: bool = False
    model: str = "default"
    agent_version: str = ""
    noise_seed: int | None = None      # privacy noise; None draws the seed from the OS (tests fix it)


@dataclass
class Iteration:
    """What :func:`run_once` did; ``progressed`` is False when there was nothing to do."""

    round: dict[str, Any] | None = None
    dataset: dict[str, Any] | None = None
    delivery: dict[str, Any] | None = None
    blocked: list[str] = field(default_factory=list)
    progressed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"round": self.round, "dataset": self.dataset, "delivery": self.delivery,
                "blocked": self.blocked, "progressed": self.progressed}


def _private_split(agent: Agent) -> tuple[Any, tuple, tuple]:
    """The private task and its validation items (label-balanced, see :func:`arte.tasks.split_task`) and
    holdout items (the path is local only)."""
    s = agent.state
    data = s.get("data_path")
    if not data:
        raise AgentError("no private data configured: `edge-agent config set data_path PATH` "
                         "(a BIG-bench task.json or JSONL; it never leaves this device)")
    task = load_task(data)
    split = split_task(task, seed=int(s.get("split_seed", "0")), n_seeds=0,
                       validation=float(s.get("validation_share", "0.5")))
    return task, split.validation, split.holdout


# -- round: score and report ----------------------------------------------------------------------------------


def _fetch_drafts(agent: Agent, rnd: RoundInfo, key: str) -> None:
    msg = agent.client.round_drafts(rnd.round_id)
    drafts = [draft_from_dict(d, path=f"round {rnd.round_id} drafts", line=i + 1) for i, d in enumerate(msg.drafts)]
    path = agent.state.dir / "rounds" / f"{rnd.round_id}.drafts.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_drafts(path, drafts)
    agent.state.set_journal(key, "drafts", {"path": str(path), "n_drafts": len(drafts)})


def _question(d: Any) -> str:
    return d.question_id or d.id


def sample_by_question(drafts: list[Any], max_drafts: int, rng: random.Random) -> list[Any]:
    """At most ``max_drafts`` drafts made of whole questions (all rationales of each), questions in random
    order; a question with more rationales than the budget left is passed over. Ordered by question, so a
    time budget that stops scoring cuts at most one question."""
    groups: dict[str, list[Any]] = {}
    for d in drafts:
        groups.setdefault(_question(d), []).append(d)
    order = sorted(groups)
    if sum(len(g) for g in groups.values()) > max_drafts:
        rng.shuffle(order)
        chosen, n = [], 0
        for q in order:
            if n + len(groups[q]) <= max_drafts:
                chosen.append(q)
                n += len(groups[q])
        order = sorted(chosen)
    return [d for q in order for d in sorted(groups[q], key=lambda d: d.id)]


def _whole_questions(result: Any, drafts: list[Any]) -> tuple[Any, list[Any]]:
    """The scores of the questions whose every rationale was scored (a time budget may stop inside one)."""
    question = {d.id: _question(d) for d in drafts}
    scored = {s.draft_id for s in result.scores}
    partial = {question[d.id] for d in drafts if d.id not in scored}
    keep = [i for i, s in enumerate(result.scores) if question[s.draft_id] not in partial]
    if len(keep) == len(result.scores):
        return result, drafts
    kept = [result.scores[i] for i in keep]
    ids = {s.draft_id for s in kept}
    return (dataclasses.replace(result, scores=kept, outcomes=result.outcomes[keep], complete=False),
            [d for d in drafts if d.id in ids])


def _score_round(agent: Agent, rnd: RoundInfo, key: str, drafts_path: str) -> dict[str, Any]:
    """Score, then queue the report with its journal step in one transaction."""
    p = agent.profile
    task, validation, _ = _private_split(agent)
    items = items_for_round(agent.state.dir, validation, p.scoring.max_items)
    if len(items) < rnd.min_items:
        reason = (f"only {len(items)} private validation items (profile max {p.scoring.max_items}); the round "
                  f"needs {rnd.min_items}")
        agent.state.set_journal(key, "skipped", {"reason": reason})
        return {"round_id": rnd.round_id, "step": "skipped", "reason": reason}
    # Each device scores its own sample of whole questions, so together the fleet covers every draft.
    rng = random.Random(f"{agent.state.get('device_id')}:{rnd.round_id}")
    drafts = sample_by_question(read_drafts(drafts_path), p.scoring.max_drafts, rng)
    if not drafts:
        reason = f"no question of the round fits the profile's max_drafts ({p.scoring.max_drafts})"
        agent.state.set_journal(key, "skipped", {"reason": reason})
        return {"round_id": rnd.round_id, "step": "skipped", "reason": reason}
    cfg = ScoringConfig(mode=rnd.mode, max_new_tokens=min(rnd.max_new_tokens, p.scoring.max_new_tokens))
    active = agent.state.active_adapter()
    student = agent.open_student(p, active["path"] if active else None)
    t0 = agent.clock()
    try:
        result = score_drafts(student, task, drafts, items, cfg,
                              should_stop=lambda: agent.clock() - t0 > p.budget.score_seconds)
    finally:
        student.close()
    learn_from_round(agent.state.dir, result, [d.question_id for d in drafts], p.scoring.irt_keep_items,
                     p.scoring.irt_min_drafts, labels={e.id: label_of(e) for e in items})
    result, drafts = _whole_questions(result, drafts)
    if not result.scores:
        reason = f"the time budget ({p.budget.score_seconds} s) ran out before one draft was scored"
        agent.state.set_journal(key, "skipped", {"reason": reason})
        return {"round_id": rnd.round_id, "step": "skipped", "reason": reason}
    scores, privacy, charge = private_scores(agent.state, rnd, result, [d.id for d in drafts],
                                             np.random.default_rng(agent.noise_seed))
    report = Report(idempotency_key=uuid.uuid4().hex, scores=scores, mode=rnd.mode, privacy=privacy,
                    agent_version=agent.agent_version)
    summary = {"round_id": rnd.round_id, "step": "queued", "idempotency_key": report.idempotency_key,
               "n_drafts": len(scores), "n_items": len(items), "complete": result.complete,
               "labels": label_counts(items),   # local only: the report carries scores, not the items' labels
               "seconds": round(agent.clock() - t0, 3)}
    with agent.state.transaction():
        queue_report(agent.state, rnd.round_id, report)
        if charge is not None:
            agent.state.record_privacy(charge)
        agent.state.set_journal(key, "queued", summary)
    return summary


def _do_round(agent: Agent, it: Iteration) -> None:
    rnd = agent.client.current_round()
    if rnd is None:
        it.round = {"step": "none", "reason": "no open round for this cohort"}
        return
    key = f"round:{rnd.round_id}"
    entry = agent.state.journal(key)
    if entry is None:
        _fetch_drafts(agent, rnd, key)
        it.progressed = True
        entry = agent.state.journal(key)
    assert entry is not None
    step, data = entry
    if step == "drafts":
        if it.blocked:
            it.round = {"round_id": rnd.round_id, "step": "drafts", "waiting": it.blocked}
            return
        try:
            it.round = _score_round(agent, rnd, key, data["path"])
        except AgentError as e:
            if isinstance(e, StateError):
                raise
            data = {"reason": str(e), "budget": isinstance(e, BudgetError)}
            agent.state.set_journal(key, "skipped", data)
            it.round = {"round_id": rnd.round_id, "step": "skipped", **data}
        it.progressed = True
    else:
        it.round = {"round_id": rnd.round_id, **data, "step": step}


# -- dataset: download, train, metrics --------------------------------------------------------------------------


def _train(agent: Agent, dataset_id: str, dataset_path: str, key: str, failures: int) -> dict[str, Any]:
    task, _, holdout = _private_split(agent)
    version = f"{dataset_id}-{uuid.uuid4().hex[:8]}"
    s = agent.state
    req = TrainRequest(dataset_path=Path(dataset_path), task=task, holdout=tuple(holdout), profile=agent.profile,
                       out_dir=s.dir / "adapters" / version, model=agent.model,
                       split_seed=int(s.get("split_seed", "0")), validation=float(s.get("validation_share", "0.5")),
                       store_dir=s.dir / "adapter-store", work_dir=s.dir / "train-work" / dataset_id)
    t0 = agent.clock()
    try:
        res = agent.train(req)
    except TrainingIncomplete as e:   # the time budget: resumes next time, not a failure
        agent.state.set_journal(key, "downloaded", {"path": dataset_path, "failures": failures, "note": str(e)})
        log.info("training on dataset %s paused: %s", dataset_id, e)
        return {"dataset_id": dataset_id, "step": "downloaded", "paused": str(e), "failures": failures}
    except (TrainingError, ArteError) as e:
        failures += 1
        step = "failed" if failures >= MAX_TRAIN_FAILURES else "downloaded"
        agent.state.set_journal(key, step, {"path": dataset_path, "failures": failures, "error": str(e)})
        log.error("training on dataset %s failed (%d/%d): %s", dataset_id, failures, MAX_TRAIN_FAILURES, e)
        return {"dataset_id": dataset_id, "step": step, "error": str(e), "failures": failures}
    kept = res.keep
    metrics = Metrics(idempotency_key=uuid.uuid4().hex, dataset_id=dataset_id, adapter_version=version,
                      before=res.before, after=res.after, kept=kept, train_seconds=round(agent.clock() - t0, 3),
                      agent_version=agent.agent_version)
    summary = {"dataset_id": dataset_id, "step": "trained", "adapter_version": version, "kept": kept,
               "before": to_wire(res.before), "after": to_wire(res.after),
               "idempotency_key": metrics.idempotency_key, **({"details": res.details} if res.details else {})}
    with agent.state.transaction():
        agent.state.add_adapter(version, dataset_id, str(res.adapter_path), res.adapter_format,
                                to_wire(res.before), to_wire(res.after), kept)
        queue_metrics(agent.state, metrics)
        agent.state.set_journal(key, "trained", summary)
    return summary


def _do_dataset(agent: Agent, it: Iteration) -> None:
    manifest = agent.client.latest_dataset()
    if manifest is None:
        it.dataset = {"step": "none", "reason": "no dataset for this cohort yet"}
        return
    key = f"dataset:{manifest.dataset_id}"
    entry = agent.state.journal(key)
    if entry is not None and entry[0] == "downloaded" and not it.blocked:
        path = Path(entry[1]["path"])
        problem = verify_file(path, manifest, agent.state.get("dataset_key")) if path.exists() else "missing"
        if problem is not None:  # changed on disk since it was verified: never train on it, fetch it again
            log.warning("dataset %s at %s no longer verifies (%s): deleted, fetching again",
                        manifest.dataset_id, path, problem)
            path.unlink(missing_ok=True)
            agent.state.clear_journal(key)
            entry = None
    if entry is None:
        path = download_dataset(agent.client, manifest, agent.state.dir / "datasets",
                                key_hex=agent.state.get("dataset_key"))
        with agent.state.transaction():
            agent.state.record_artifact(manifest.dataset_id, manifest.sha256, manifest.size, str(path),
                                        to_wire(manifest))
            agent.state.set_journal(key, "downloaded", {"path": str(path), "failures": 0})
        it.progressed = True
        entry = ("downloaded", {"path": str(path), "failures": 0})
    step, data = entry
    if step != "downloaded":
        it.dataset = {"dataset_id": manifest.dataset_id, **data, "step": step}
        return
    if it.blocked:
        it.dataset = {"dataset_id": manifest.dataset_id, "step": "downloaded", "waiting": it.blocked}
        return
    it.dataset = _train(agent, manifest.dataset_id, data["path"], key, int(data.get("failures", 0)))
    it.progressed = True


# -- iterations -------------------------------------------------------------------------------------------------


def run_once(agent: Agent) -> Iteration:
    """One iteration: deliver the outbox, the round, the dataset, deliver again."""
    it = Iteration()
    if not agent.ignore_conditions:
        it.blocked = work_blockers(agent.profile, agent.detect())
    first = deliver(agent.state, agent.client)
    _do_round(agent, it)
    _do_dataset(agent, it)
    last = deliver(agent.state, agent.client)
    it.delivery = {"delivered": first.delivered + last.delivered, "rejected": first.rejected + last.rejected,
                   "pending": last.pending, "error": last.error}
    it.progressed |= bool(it.delivery["delivered"] or it.delivery["rejected"])
    return it


def run_forever(agent: Agent, *, poll_seconds: float = 60.0, max_poll_seconds: float = 3600.0,
                wait: Callable[[float], None] = time.sleep, iterations: int | None = None,
                on_iteration: Callable[[Iteration | AgentError], None] | None = None) -> None:
    """Iterate until ``iterations`` (None: forever). After an iteration that did nothing, or failed on the
    network, the wait doubles up to ``max_poll_seconds``; progress resets it. Auth and state errors stop
    the loop (an operator must act); other agent errors are logged and retried after the wait."""
    delay = poll_seconds
    n = 0
    while iterations is None or n < iterations:
        n += 1
        try:
            it = run_once(agent)
        except (AuthError, StateError):
            raise
        except (AgentError, ArteError) as e:
            level = logging.WARNING if isinstance(e, NetworkError) else logging.ERROR
            log.log(level, "iteration %d: %s", n, e)
            if on_iteration is not None:
                on_iteration(e if isinstance(e, AgentError) else AgentError(str(e)))
            delay = min(delay * 2, max_poll_seconds)
        else:
            if on_iteration is not None:
                on_iteration(it)
            delay = poll_seconds if it.progressed else min(delay * 2, max_poll_seconds)
        if iterations is None or n < iterations:
            wait(delay)
