"""The fleet server with an OpenAI-compatible teacher endpoint: elicit -> align -> tailor, the cohort's
adapter served on the endpoint after the align job and used by the tailor job's requests.

The endpoint is a loopback stand-in for vLLM written from its documented contract (tests/support/vllm_fake.py:
``/v1/load_lora_adapter``, ``/v1/unload_lora_adapter``, ``/v1/models``); no vLLM runs here. The real
llama-cpp-python server runs the same loop in tests/slow/test_teacher_endpoint_e2e.py. A retried align
job resumes from its checkpoint: real TRL on a tiny random llama (tests/support/tiny_hf.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pytest

from arte.prompts import question_block
from server import job_handlers, serving
from server.worker import Worker
from tests.support.server_support import Backend, Fleet, build_fleet
from tests.support.teacher_fakes import asked_question, is_question_prompt
from tests.support.vllm_fake import FakeVLLM, serve_vllm

QUESTIONS = [f"Statement: Player {i} caught the screen pass in the end zone\nOptions: yes, no" for i in range(8)]


def _reply(body: dict[str, Any]) -> str:
    messages = body["messages"]
    if messages[-1]["role"] == "assistant":
        return ""
    if is_question_prompt(messages):
        start = body["seed"] % 2 * 4
        return question_block(QUESTIONS[start:start + 4])
    q = asked_question(messages)
    style = messages[0]["content"][:20]
    return f"{style}: a receiver catches passes in football. <ans>{'yes' if '2' in q else 'no'}</ans>"


@pytest.fixture
def vllm() -> Iterator[FakeVLLM]:
    with serve_vllm("teacher-base", _reply) as srv:
        yield srv


def _fleet(sqlite_backend: Backend, tmp_path: Path, vllm: FakeVLLM, **kw: Any) -> Fleet:
    return build_fleet(sqlite_backend, tmp_path, drafting_endpoint=vllm.url, drafting_endpoint_model="teacher-base",
                       **{"drafting_adapter_serving": "vllm", **kw})


def _run(f: Fleet, body: dict, state: str = "succeeded") -> dict:
    job_id = f.ok(f.client.post("/api/v1/jobs", json=body, headers=f.admin), 201)["job_id"]
    assert Worker(f.settings, f.sessions, worker_id="w", clock=f.clock, heartbeat_thread=False).run_once() == job_id
    job = f.ok(f.client.get(f"/api/v1/jobs/{job_id}", headers=f.admin))
    logs = f.ok(f.client.get(f"/api/v1/jobs/{job_id}/logs", headers=f.admin))
    assert job["state"] == state, (job, logs)
    return {**job, "logs": [x["message"] for x in logs]}


def _elicit_and_report(f: Fleet, cohort: str) -> str:
    config = {"n_questions": 4, "styles": ["plain", "expert"], "batch_size": 4}
    rnd = _run(f, {"kind": "elicit", "cohort_id": cohort, "params": {"config": config}})["result"]["round_id"]
    ids = [d["id"] for d in f.ok(f.client.get(f"/api/v1/rounds/{rnd}/drafts", headers=f.admin))["drafts"]]
    correct = {d: 5 for d in ids} | {"q0000-plain": 9, "q0000-expert": 2, "q0003-plain": 1, "q0003-expert": 1}
    for _ in range(2):
        _, dev = f.device(cohort)
        f.ok(f.report(rnd, dev, [(d, 10, correct[d]) for d in ids]))
    return rnd


def _fake_align(model: Any, pairs: Any, config: Any, out_dir: Path, **kw: Any) -> Any:
    """DPO replaced: a PEFT-shaped adapter directory (what vLLM checks) and the metadata."""
    import arte.dpo

    out_dir.mkdir(parents=True)
    (out_dir / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8, "lora_alpha": 16}))
    meta = {"pairs": {"total": len(pairs), "trained": len(pairs), "held_out": 0}, "steps": 1}
    (out_dir / arte.dpo.METADATA_FILE).write_text(json.dumps(meta))
    return arte.dpo.AlignResult(out_dir, meta)


def test_the_tailor_requests_use_the_cohort_adapter_served_on_vllm(sqlite_backend: Backend, tmp_path: Path,
                                                                   vllm: FakeVLLM, monkeypatch) -> None:

    monkeypatch.setattr(job_handlers, "align", _fake_align)
    monkeypatch.setattr(job_handlers, "resolve_model", lambda ref, cache: ref)
    f = _fleet(sqlite_backend, tmp_path, vllm)
    cohort = f.cohort(k=2)
    rnd = _elicit_and_report(f, cohort)
    chats = vllm.calls("/v1/chat/completions")
    assert chats and {b["model"] for b in chats} == {"teacher-base"}          # drafts: the base model

    align = _run(f, {"kind": "align", "cohort_id": cohort, "round_id": rnd, "params": {"pairs": {"questions_per_block": 1}}})
    adapter = align["result"]["adapter"]
    name = serving.served_name(adapter)
    assert name == f"arte-{cohort}-{align['job_id']}"
    assert vllm.calls("/v1/load_lora_adapter") == [{"lora_name": name, "lora_path": adapter}]
    assert align["result"]["serving"] == {"kind": "vllm", "name": name, "endpoint": vllm.url, "unloaded": None}
    assert vllm.loras == {name: adapter}

    n = len(vllm.calls("/v1/chat/completions"))
    tailor = {"kind": "tailor", "cohort_id": cohort, "round_id": rnd,
              "params": {"config": {"n_questions": 4, "check_samples": 0, "batch_size": 4}}}
    ds = _run(f, tailor)["result"]
    tailored = vllm.calls("/v1/chat/completions")[n:]
    assert ds["n_examples"] == 4 and tailored and {b["model"] for b in tailored} == {name}

    # vLLM restarted and forgot the adapter: the next tailor job loads it again before its requests
    vllm.restart()
    n = len(vllm.calls("/v1/chat/completions"))
    _run(f, tailor)
    assert vllm.calls("/v1/load_lora_adapter")[-1] == {"lora_name": name, "lora_path": adapter}
    assert {b["model"] for b in vllm.calls("/v1/chat/completions")[n:]} == {name}

    # a new align job: its adapter is loaded under a new name, the previous one unloaded
    again = _run(f, {"kind": "align", "cohort_id": cohort, "round_id": rnd, "params": {"pairs": {"questions_per_block": 1}}})
    new = serving.served_name(again["result"]["adapter"])
    assert new != name and vllm.calls("/v1/unload_lora_adapter") == [{"lora_name": name}]
    assert vllm.loras == {new: again["result"]["adapter"]} and again["result"]["serving"]["unloaded"] == name


def test_a_failing_vllm_keeps_the_cohort_on_its_adapter(sqlite_backend: Backend, tmp_path: Path, vllm: FakeVLLM,
                                                        monkeypatch) -> None:
    """vLLM cannot load the adapter (here: the path it is given holds none): the job fails saying what vLLM
    answered, and the cohort's adapter is not switched to one the endpoint cannot serve."""

    def no_files(model, pairs, config, out_dir, **kw):
        res = _fake_align(model, pairs, config, out_dir)
        (out_dir / "adapter_config.json").unlink()
        return res

    monkeypatch.setattr(job_handlers, "align", no_files)
    monkeypatch.setattr(job_handlers, "resolve_model", lambda ref, cache: ref)
    f = _fleet(sqlite_backend, tmp_path, vllm)
    cohort = f.cohort(k=2)
    rnd = _elicit_and_report(f, cohort)
    job = _run(f, {"kind": "align", "cohort_id": cohort, "round_id": rnd, "max_attempts": 1,
                   "params": {"pairs": {"questions_per_block": 1}}}, state="failed")
    assert "load_lora_adapter" in job["error"] and "HTTP 404" in job["error"] and "No adapter found" in job["error"]
    assert f.ok(f.client.get(f"/api/v1/cohorts/{cohort}", headers=f.admin)).get("adapter") is None


def test_llama_cpp_serving_exports_the_adapter_and_writes_the_server_config(sqlite_backend: Backend, tmp_path: Path,
                                                                            vllm: FakeVLLM) -> None:
    """``llama-cpp``: the PEFT adapter becomes a GGUF LoRA beside it, and the llama-cpp-python config lists
    the base and the cohort's newest adapter; until the server is restarted with it, a job that needs the
    adapter fails saying so (llama-cpp-python would answer an unknown model with its base)."""
    pytest.importorskip("peft")
    pytest.importorskip("gguf")
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from arte.models import ModelRef
    from server.errors import JobError
    from tests.support.tiny_hf import build_tiny_hf

    base = ModelRef("hf", build_tiny_hf(tmp_path / "tiny"), "tiny")
    fake_gguf = ModelRef("gguf", tmp_path / "teacher.gguf", "teacher")
    f = build_fleet(sqlite_backend, tmp_path, drafting_endpoint=vllm.url + "/v1", drafting_endpoint_model="teacher-base",
                    drafting_adapter_serving="llama-cpp", llama_server_options={"n_ctx": 4096})
    config = serving.llama_server_config(f.settings)
    for job in ("job_a", "job_b"):
        adapter = Path(f.settings.data_dir) / "adapters" / "coh_x" / job
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(base.path),
                               LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
        model.save_pretrained(adapter)
        done = serving.publish(f.settings, adapter, None, teacher_ref=base, drafting_ref=fake_gguf)
        assert (adapter / serving.GGUF_ADAPTER_FILE).read_bytes()[:4] == b"GGUF"
    doc = json.loads(config.read_text())
    assert done == {"kind": "llama-cpp", "name": "arte-coh_x-job_b", "gguf": str(adapter / "adapter.gguf"),
                    "config": str(config), "restart": f"python -m llama_cpp.server --config_file {config}"}
    assert doc["host"] == "127.0.0.1" and doc["port"] == vllm.server_address[1]
    assert doc["models"] == [   # the older adapter of the same cohort is gone
        {"model": str(fake_gguf.path), "model_alias": "teacher-base", "n_ctx": 4096},
        {"model": str(fake_gguf.path), "model_alias": "arte-coh_x-job_b", "lora_path": str(adapter / "adapter.gguf"),
         "n_ctx": 4096}]
    with pytest.raises(JobError) as e:
        serving.ensure_served(f.settings, adapter)
    assert "arte-coh_x-job_b" in str(e.value) and f"--config_file {config}" in str(e.value)


def test_a_retried_align_job_resumes_from_its_checkpoint(sqlite_backend: Backend, tmp_path: Path, vllm: FakeVLLM,
                                                         monkeypatch) -> None:
    """Real DPO (TRL) on a tiny random llama: the first attempt dies after the checkpoint of step 2; the
    worker retries the job, which trains on the same pairs from that checkpoint to step 4."""
    pytest.importorskip("trl")
    import torch

    import arte.dpo
    from tests.support.tiny_hf import build_tiny_hf

    torch.set_num_threads(1)
    real, attempts = arte.dpo.align, []

    def dies_once(model, pairs, config, out_dir, progress=None, **kw):
        attempts.append([p.id for p in pairs])

        def report(stage: str, done: int, total: int) -> None:
            if len(attempts) == 1 and done == 3:
                raise RuntimeError("the worker's machine went away")
            progress(stage, done, total)

        return real(model, pairs, config, out_dir, report, **kw)

    monkeypatch.setattr(job_handlers, "align", dies_once)
    f = _fleet(sqlite_backend, tmp_path, vllm, teacher_model=str(build_tiny_hf(tmp_path / "tiny")),
               align_checkpoint_steps=2, drafting_adapter_serving="none")
    cohort = f.cohort(k=2)
    rnd = _elicit_and_report(f, cohort)
    config = {"max_steps": 4, "batch_size": 1, "max_length": 4096, "holdout_share": 0.0, "eval_pairs": 0,
              "device": "cpu", "lora_r": 4, "lora_alpha": 8, "warmup_ratio": 0.0}
    body = {"kind": "align", "cohort_id": cohort, "round_id": rnd, "max_attempts": 2,
            "params": {"config": config, "pairs": {"questions_per_block": 1}}}
    job = _run(f, body, state="queued")                     # re-queued: a retryable failure
    assert "went away" in job["error"]
    ckpt = Path(f.settings.data_dir) / "jobs" / job["job_id"] / "checkpoints"
    assert sorted(p.name for p in ckpt.glob("checkpoint-*")) == ["checkpoint-2"]
    f.clock.advance(3600)
    assert Worker(f.settings, f.sessions, worker_id="w2", clock=f.clock, heartbeat_thread=False).run_once() == job["job_id"]
    job = f.ok(f.client.get(f"/api/v1/jobs/{job['job_id']}", headers=f.admin))
    assert job["state"] == "succeeded" and job["attempts"] == 2
    res = job["result"]
    assert res["resumed_from_step"] == 2 and res["steps"] == 4 and [x["step"] for x in res["losses"]] == [1, 2, 3, 4]
    assert attempts[0] == attempts[1] and res["n_pairs"] == len(attempts[0])   # the same pairs, from the work dir
    assert not ckpt.exists() and (Path(res["adapter"]) / "adapter_model.safetensors").is_file()
