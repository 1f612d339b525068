"""Job handlers: what each job kind does, one function per kind, all in this module.

A handler gets a :class:`JobContext` and returns the job's result (a JSON object). It reports progress
with ``ctx.progress(fraction)``, which also heartbeats and raises :class:`JobCancelled` when the job was
cancelled or taken away; it raises :class:`~server.errors.JobError` for a failure worth a clear log line
(``retry=False`` when retrying cannot help). Kinds:

* ``aggregate`` — compute and store a round's cohort aggregate (database only).
* ``elicit`` — the teacher writes drafts for the cohort's task (``arte.elicit.elicit_drafts``); they
  become a new open round.
* ``align`` — refuses unless the cohort may align (``arte.privacy.cohort_threshold``: k distinct
  devices reported); builds chosen/rejected pairs from the drafts that k devices scored, each pair
  beyond the noise of the pooled scores (``arte.pairs.select_pairs``), and aligns the teacher with DPO
  (``arte.dpo.align``) into a LoRA adapter for the cohort, in the worker or under ``accelerate launch``
  (``align_launcher``). When no pair passes, the job *succeeds* with ``outcome: no_signal`` (retrying
  cannot change the reports), the numbers in ``pair_selection`` and the cohort's adapter unchanged;
  with pairs, ``outcome: pairs``.
* ``tailor`` — the (aligned) teacher writes a tailored dataset (``arte.tailor.tailor_dataset``), stored
  as the cohort's newest dataset.

The teacher-side functions live in ``arte`` and are imported inside the handlers (heavy, and written
in parallel): the config dataclasses are built from the job's ``params`` (``params["config"]``).

Every handler is idempotent per job: the round, aggregate, adapter and dataset it stores carry its job id,
and an attempt that finds its job's row (an earlier attempt stored it, then its worker died before the job
was marked done) returns that instead of storing a second one (campaigns rely on it: :mod:`server.driver`).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from arte.backends import open_teacher
from arte.dpo import METADATA_FILE, AlignConfig, align
from arte.drafts import draft_from_dict
from arte.elicit import ElicitConfig, elicit_drafts
from arte.home import convert_dir, model_dir
from arte.models import resolve_model
from arte.pairs import NO_SIGNAL, PairConfig, read_pairs, select_pairs, write_pairs
from arte.procs import child_env, death_message
from arte.tailor import TailorConfig, tailor_dataset
from arte.tasks import Example, Task, label_counts
from server import aggregates, datasets, fleet, lineage, queue, serving
from server.db import transaction
from server.errors import ApiError, JobError
from server.schemas import DatasetIn, RoundIn
from server.settings import ServerSettings
from server.tables import Aggregate, Dataset, Round

__all__ = ["JobContext", "JobCancelled", "HANDLERS", "run_handler"]


class JobCancelled(Exception):
    """The attempt must stop: its job was cancelled (``reason="cancel"``) or re-queued (``"lost"``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class JobContext:
    """What a handler may use: the claim, settings, sessions, the clock, logging and progress."""

    claim: queue.Claim
    settings: ServerSettings
    sessions: sessionmaker[Session]
    clock: Callable[[], datetime]
    stop_reason: str | None = None
    children: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def log(self, message: str, level: str = "info") -> None:
        queue.log(self.sessions, self.claim, message, self.clock(), level)

    def progress(self, fraction: float | None = None) -> None:
        """Heartbeat with progress; raises :class:`JobCancelled` when the attempt must stop."""
        if self.stop_reason is None:
            status = queue.heartbeat(self.sessions, self.claim, self.clock(), fraction)
            if status != "ok":
                self.stop_reason = status
        if self.stop_reason is not None:
            raise JobCancelled(self.stop_reason)

    def stage_progress(self, stage: str, done: int, total: int) -> None:
        """``arte``'s progress callback, ``(stage, done, total)``, as a heartbeat with a fraction."""
        self.progress(done / total if total else None)

    def work_dir(self) -> Path:
        d = Path(self.settings.data_dir) / "jobs" / self.claim.job_id
        d.mkdir(parents=True, exist_ok=True)
        return d


def _round(s: Session, ctx: JobContext) -> Round:
    if ctx.claim.round_id is None:
        raise JobError("this job needs a round_id")
    rnd = s.get(Round, ctx.claim.round_id)
    if rnd is None or rnd.cohort_id != ctx.claim.cohort_id:
        raise JobError(f"round {ctx.claim.round_id} is not a round of cohort {ctx.claim.cohort_id}")
    return rnd


def run_aggregate(ctx: JobContext) -> dict[str, Any]:
    ctx.progress(0.0)
    with transaction(ctx.sessions) as s:
        rnd = _round(s, ctx)
        agg = aggregates.compute_aggregate(s, rnd)
        row = s.scalar(sa.select(Aggregate).where(Aggregate.job_id == ctx.claim.job_id)) \
            or aggregates.store_aggregate(s, rnd, agg, ctx.clock(), job_id=ctx.claim.job_id)
        out = {
            "aggregate_id": row.id,
            "round_id": rnd.id,
            "n_devices": agg.n_devices,
            "min_devices": agg.min_devices,
            "meets_k": agg.meets_k,
            "may_align": agg.may_align,
            "n_drafts": len(agg.drafts),
        }
    ctx.log(f"aggregated {out['n_drafts']} drafts from {agg.n_devices} devices (k={agg.min_devices})")
    return out


# --- teacher-side jobs (arte.elicit / pairs / dpo / tailor, imported lazily) -----------------------------


def _arte_task(s: Session, cohort_id: str) -> tuple[Any, list[Any]]:
    cohort = fleet.get_cohort(s, cohort_id)
    row = fleet.get_task(s, cohort.task_id)
    seeds = []
    for i, x in enumerate(row.seeds):
        if "choices" in x:
            seeds.append(
                Example(id=f"seed-{i}", input=x["input"], targets=(x["answer"],), choices=tuple(x["choices"]))
            )
        else:
            t = x["target"]
            seeds.append(
                Example(id=f"seed-{i}", input=x["input"], targets=tuple(t) if isinstance(t, list) else (t,))
            )
    return Task(name=row.name, description=row.instruction, examples=tuple(seeds)), seeds


def _open_teacher(settings: ServerSettings, adapter: str | None) -> Any:
    """The elicit/tailor teacher of the settings (``drafting_*``, :func:`arte.backends.open_teacher`),
    with the cohort's adapter (the PEFT directory an align job wrote) when given: on an endpoint under its
    served name (:mod:`server.serving`), on llama.cpp as its GGUF LoRA export, on torch as it is."""

    backend = settings.drafting_backend
    remote = backend == "openai" or (backend == "auto" and settings.drafting_endpoint)
    if remote and (adapter is None or settings.drafting_adapter_serving != "none"):
        key = settings.drafting_api_key.get_secret_value() if settings.drafting_api_key else None
        return open_teacher(None, "openai", endpoint=settings.drafting_endpoint,
                            endpoint_model=settings.drafting_endpoint_model, api_key=key,
                            adapter=serving.ensure_served(settings, adapter) if adapter else None,
                            structured_output=settings.drafting_structured_output,
                            timeout=settings.drafting_timeout_s)
    if remote:   # the endpoint does not serve adapters: the cohort's adapter runs here, on torch
        backend = "torch"
    ref = resolve_model(settings.drafting_model or settings.teacher_model, model_dir())
    local_adapter: str | None = adapter
    if adapter and backend == "llama":   # llama.cpp applies the adapter's GGUF LoRA export
        gguf = Path(adapter) / serving.GGUF_ADAPTER_FILE
        if not gguf.is_file():
            serving.export_gguf(Path(adapter), resolve_model(settings.teacher_model, model_dir()))
        local_adapter = str(gguf)
    return open_teacher(ref, backend, adapter=local_adapter, adapter_name="cohort",
                        n_gpu_layers=settings.drafting_gpu_layers, device=settings.drafting_device,
                        dtype=settings.drafting_dtype, device_map=settings.drafting_device_map,
                        convert_dir=convert_dir())


def run_elicit(ctx: JobContext) -> dict[str, Any]:
    ctx.progress(0.0)
    with transaction(ctx.sessions) as s:
        done = s.scalar(sa.select(Round).where(Round.job_id == ctx.claim.job_id))
        if done is not None:
            return {"round_id": done.id, "n_drafts": done.n_drafts, "resumed": True}
        task, seeds = _arte_task(s, ctx.claim.cohort_id or "")
        # campaigns: the drafts come from the teacher with the cohort's newest adapter
        adapter = fleet.get_cohort(s, ctx.claim.cohort_id or "").adapter \
            if ctx.claim.params.get("use_cohort_adapter") else None
    config = ElicitConfig(**ctx.claim.params.get("config", {}))
    teacher = _open_teacher(ctx.settings, adapter)
    try:
        res = elicit_drafts(teacher, task, seeds, config, progress=ctx.stage_progress)
    finally:
        teacher.close()
    if not res.drafts:
        raise JobError(f"the teacher wrote no usable drafts: {json.dumps(res.summary())}", retry=False)
    ctx.log(f"elicitation: {json.dumps(res.summary())}")
    body = RoundIn(
        cohort_id=ctx.claim.cohort_id or "",
        drafts=[d.to_dict() for d in res.drafts],
        **{k: v for k, v in ctx.claim.params.items() if k in ("mode", "max_new_tokens", "min_items")},
    )
    with transaction(ctx.sessions) as s:   # (ctx.log opens its own transaction: never inside one)
        rnd = fleet.create_round(s, body, ctx.clock(), job_id=ctx.claim.job_id)
        out = {"round_id": rnd.id, "n_drafts": rnd.n_drafts, "elicitation": res.summary(),
               "labels": label_counts(res.drafts)}   # the drafts' answers
    ctx.log(f"round {out['round_id']} opened with {out['n_drafts']} drafts")
    return out


def _pairs_of_this_job(ctx: JobContext, select: Callable[[], Any]) -> tuple[list[Any], dict[str, Any], str]:
    """(pairs, selection numbers, its description): selected now and kept in the job's work dir, or
    those of an earlier attempt of this job, so a retried job resumes training on the same pairs."""

    pairs_path, sel_path = ctx.work_dir() / "pairs.jsonl", ctx.work_dir() / "selection.json"
    if pairs_path.is_file() and sel_path.is_file():
        saved = json.loads(sel_path.read_text(encoding="utf-8"))
        pairs = read_pairs(pairs_path)
        ctx.log(f"a retried attempt: training on the {len(pairs)} pairs of the first ({pairs_path})")
        return pairs, saved["selection"], saved["describe"]
    selection = select()
    if selection.pairs:   # TRL's conversational format: `datasets` loads this file as it is
        write_pairs(pairs_path, selection.pairs)
        sel_path.write_text(json.dumps({"selection": selection.to_dict(), "describe": selection.describe()}),
                            encoding="utf-8")
    return selection.pairs, selection.to_dict(), selection.describe()


def run_align(ctx: JobContext) -> dict[str, Any]:
    ctx.progress(0.0)
    with transaction(ctx.sessions) as s:
        done = lineage.adapter_for_job(s, ctx.claim.job_id)
        if done is not None:
            return {**done.summary, "resumed": True}
        rnd = _round(s, ctx)
        agg = aggregates.compute_aggregate(s, rnd)
        if not agg.may_align:  # arte.privacy.cohort_threshold
            raise JobError(
                f"alignment refused for round {rnd.id}: {agg.reason} (fewer than the cohort's "
                f"k={agg.min_devices} distinct devices)"
            )
        task, seeds = _arte_task(s, rnd.cohort_id)
        drafts_raw = fleet.round_drafts(s, rnd).drafts
        cohort = fleet.get_cohort(s, rnd.cohort_id)
        previous = cohort.adapter

    def select() -> Any:
        scores = agg.alignment_estimates()  # only drafts scored by at least k distinct devices
        drafts = [draft_from_dict(d) for d in drafts_raw if d["id"] in scores]
        ctx.log(f"{len(drafts)} of {len(drafts_raw)} drafts were scored by at least k={agg.min_devices} devices")
        return select_pairs(task, drafts, scores, seeds, PairConfig(**ctx.claim.params.get("pairs", {})))

    pairs, selection, described = _pairs_of_this_job(ctx, select)
    ctx.log(f"pairs: {described}", "info" if pairs else "warning")
    if not pairs:   # a result, not a failure: the teacher stays as it is
        return {"outcome": NO_SIGNAL, "reason": described, "adapter": None, "n_pairs": 0,
                "n_devices": agg.n_devices, "pair_selection": selection}
    out_dir = Path(ctx.settings.data_dir) / "adapters" / rnd.cohort_id / ctx.claim.job_id
    config = {**ctx.settings.align_defaults, **ctx.claim.params.get("config", {})}
    config.setdefault("save_steps", ctx.settings.align_checkpoint_steps)
    checkpoints = ctx.work_dir() / "checkpoints"

    teacher_ref = resolve_model(ctx.settings.teacher_model, model_dir())
    if (out_dir / METADATA_FILE).is_file():   # written last: an earlier attempt finished training
        ctx.log(f"the adapter of an earlier attempt is complete: {out_dir}")
    elif ctx.settings.align_launcher == "accelerate":
        _align_subprocess(ctx, pairs, config, out_dir, checkpoints)
    else:

        result = align(teacher_ref, pairs, AlignConfig(**config), out_dir, progress=ctx.stage_progress,
                       convert_dir=convert_dir(), checkpoint_dir=checkpoints, resume=True)
        if result.metadata.get("resumed_from_step"):
            ctx.log(f"resumed DPO from the checkpoint of step {result.metadata['resumed_from_step']}")
        ctx.log(f"DPO reward margin on the {result.margin_on} pairs: {result.margin_before} -> {result.margin_after}")
    drafting_ref = (resolve_model(ctx.settings.drafting_model, model_dir()) if ctx.settings.drafting_model
                    else teacher_ref)
    served = serving.publish(ctx.settings, out_dir, previous, teacher_ref=teacher_ref, drafting_ref=drafting_ref)
    if served["kind"] != "none":
        ctx.log(f"adapter served as {served['name']} ({served['kind']})"
                + (f"; restart the llama.cpp server: {served['restart']}" if "restart" in served else ""))
    out = {"outcome": selection["outcome"], "adapter": str(out_dir), "n_pairs": len(pairs),
           "n_devices": agg.n_devices, "pair_selection": selection, "serving": served, **_align_summary(out_dir)}
    with transaction(ctx.sessions) as s:
        row = lineage.record_adapter(s, fleet.get_cohort(s, cohort.id), path=str(out_dir), round_id=rnd.id,
                                     job_id=ctx.claim.job_id, n_pairs=len(pairs), summary=out, now=ctx.clock())
        out = row.summary = {**out, "adapter_id": row.id, "parent_id": row.parent_id}
    ctx.log(f"aligned the teacher on {len(pairs)} pairs; adapter {out['adapter_id']} at {out_dir}")
    return out


def _align_summary(out_dir: Path) -> dict[str, Any]:
    """What the job's result shows of the training (either launcher wrote it next to the adapter)."""

    try:
        meta = json.loads((out_dir / METADATA_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    # reward: accuracy and margin before/after on the held-out pairs and on the training pairs (labelled);
    # reward_margin: the headline (held-out when any pair was held out; "on" says which)
    return {k: meta.get(k) for k in ("pairs", "steps", "resumed_from_step", "warmup_steps", "train_loss", "losses",
                                     "reward", "reward_margin", "seconds")}


def _align_subprocess(ctx: JobContext, pairs: list[Any], config: dict[str, Any], out_dir: Path,
                      checkpoints: Path | None = None) -> None:
    """``accelerate launch [accelerate_args] -m server.align_launch spec.json``; heartbeats while it runs
    and terminates it when the job is cancelled. The child resumes from the newest checkpoint in
    ``checkpoints`` (a retried job)."""
    spec = ctx.work_dir() / "align.json"
    spec.write_text(
        json.dumps(
            {
                "teacher_model": ctx.settings.teacher_model,
                "config": config,
                "out_dir": str(out_dir),
                "checkpoint_dir": str(checkpoints) if checkpoints else None,
                "pairs": [p.to_dict() for p in pairs],
            }
        )
    )
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        *ctx.settings.accelerate_args,
        "-m",
        "server.align_launch",
        str(spec),
    ]
    ctx.log("running " + " ".join(cmd))
    log_path = ctx.work_dir() / "align.log"
    with open(log_path, "ab") as logf:   # faulthandler on, unbuffered: a crash leaves its stack in the log
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=child_env())
        ctx.children.append(proc)
        while True:
            try:
                rc = proc.wait(timeout=ctx.settings.job_heartbeat_s)
                break
            except subprocess.TimeoutExpired:
                try:
                    ctx.progress()
                except JobCancelled:
                    proc.terminate()
                    proc.wait()
                    raise
    if rc != 0:
        raise JobError(death_message("accelerate launch (the align job's DPO)", rc, log_path, lines=40), retry=True)


def run_tailor(ctx: JobContext) -> dict[str, Any]:
    ctx.progress(0.0)
    with transaction(ctx.sessions) as s:
        done = s.scalar(sa.select(Dataset).where(Dataset.job_id == ctx.claim.job_id))
        if done is not None:
            return {"dataset_id": done.id, "n_examples": done.n_examples, "sha256": done.sha256,
                    "adapter_id": done.adapter_id, "resumed": True}
        task, seeds = _arte_task(s, ctx.claim.cohort_id or "")
        cohort = fleet.get_cohort(s, ctx.claim.cohort_id or "")
        adapter, adapter_id = cohort.adapter, cohort.adapter_id
    teacher = _open_teacher(ctx.settings, adapter)
    out_dir = ctx.work_dir() / "tailor"
    try:
        result = tailor_dataset(
            teacher,
            task,
            seeds,
            TailorConfig(**ctx.claim.params.get("config", {})),
            out_dir,
            progress=ctx.stage_progress,
        )
        teacher_name = teacher.name
    finally:
        teacher.close()
    ctx.log(f"tailoring: {json.dumps(result.manifest.get('counts', {}))}")
    if not result.examples:
        raise JobError(f"tailoring kept no examples: {json.dumps(result.manifest.get('counts', {}))}",
                       retry=False)
    path = result.dataset_path
    body = DatasetIn(
        cohort_id=ctx.claim.cohort_id or "",
        round_id=ctx.claim.round_id,
        content=path.read_text(encoding="utf-8"),
        teacher=teacher_name,
        adapter=adapter,
    )
    key = ctx.settings.dataset_signing_key.get_secret_value() if ctx.settings.dataset_signing_key else None
    with transaction(ctx.sessions) as s:
        ds = datasets.create_dataset(s, body, ctx.clock(), key)
        ds.adapter_id, ds.job_id = adapter_id, ctx.claim.job_id
        out = {"dataset_id": ds.id, "n_examples": ds.n_examples, "sha256": ds.sha256, "adapter_id": adapter_id,
               "counts": result.manifest.get("counts", {}), "labels": result.manifest.get("labels", {})}
    ctx.log(f"dataset {out['dataset_id']}: {out['n_examples']} examples, sha256 {out['sha256']}")
    return out


HANDLERS: dict[str, Callable[[JobContext], dict[str, Any]]] = {
    "aggregate": run_aggregate,
    "elicit": run_elicit,
    "align": run_align,
    "tailor": run_tailor,
}


def run_handler(ctx: JobContext) -> dict[str, Any]:
    """Run the handler of the claimed job's kind; :class:`ApiError` becomes a non-retryable JobError."""
    handler = HANDLERS.get(ctx.claim.kind)
    if handler is None:
        raise JobError(f"no handler for job kind {ctx.claim.kind!r}")
    try:
        return handler(ctx)
    except ApiError as e:
        raise JobError(f"{e.type}: {e.message}") from e
