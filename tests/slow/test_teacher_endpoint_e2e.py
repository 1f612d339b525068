"""The fleet server with a real OpenAI-compatible teacher endpoint: llama-cpp-python's own server
(``python -m llama_cpp.server``) runs the embedded model; elicit -> align -> tailor, the tailor job's
requests on the cohort's adapter.

Elicit writes drafts over HTTP (base model, GBNF-constrained); two devices' reports make a pair; the align
job trains a LoRA with TRL on the same weights (1 step), exports it as a GGUF LoRA and writes the server's
config file (``drafting_adapter_serving=llama-cpp``). llama.cpp servers load adapters when they start, so
the test restarts the server with that file, as an operator would; the tailor job then asks for the
cohort's adapter by name, and the server's log shows it loading the GGUF LoRA for those requests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.live_server import free_port, wait_until_up

pytestmark = pytest.mark.slow


class LlamaServer:
    """``python -m llama_cpp.server --config_file FILE`` on a loopback port, restartable."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config, self.log = config, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        doc = json.loads(self.config.read_text())
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--config_file", str(self.config)],
                                         stdout=log, stderr=subprocess.STDOUT)
        wait_until_up(self.proc, f"http://{doc['host']}:{doc['port']}/v1/models", self.log, "llama_cpp.server", 120)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        self.proc = None


def test_elicit_align_tailor_through_the_llama_cpp_server(tmp_path: Path, default_model, n_threads: int,
                                                           sqlite_backend) -> None:
    pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python's server extra is not installed")
    import torch

    from server import serving
    from server.worker import Worker
    from tests.support.server_support import build_fleet

    torch.set_num_threads(1)
    port = free_port()
    opts = {"n_ctx": 2048, "n_threads": n_threads, "verbose": True}
    config = tmp_path / "llama_server.json"
    config.write_text(json.dumps({"host": "127.0.0.1", "port": port, "models": [
        {"model": str(default_model.path), "model_alias": "teacher", **opts}]}))
    server = LlamaServer(config, tmp_path / "llama_server.log")
    server.start()
    try:
        f = build_fleet(sqlite_backend, tmp_path, drafting_endpoint=f"http://127.0.0.1:{port}",
                        drafting_endpoint_model="teacher", drafting_structured_output="llama-server",
                        drafting_adapter_serving="llama-cpp", llama_server_config=config,
                        llama_server_options=opts, align_checkpoint_steps=0)

        def run(body: dict) -> dict:
            job_id = f.ok(f.client.post("/api/v1/jobs", json=body, headers=f.admin), 201)["job_id"]
            assert Worker(f.settings, f.sessions, worker_id="w", clock=f.clock, heartbeat_thread=False).run_once()
            job = f.ok(f.client.get(f"/api/v1/jobs/{job_id}", headers=f.admin))
            logs = [x["message"] for x in f.ok(f.client.get(f"/api/v1/jobs/{job_id}/logs", headers=f.admin))]
            assert job["state"] == "succeeded", (job, logs)
            return job

        cohort = f.cohort(k=1)
        # the grammar bounds a rationale to 160 characters, so it ends in its <ans> inside the token budget
        small = {"n_questions": 1, "questions_per_prompt": 2, "question_max_new_tokens": 96, "max_question_prompts": 4,
                 "batch_size": 2, "max_rationale_chars": 160, "rationale_max_new_tokens": 80}
        elicit = run({"kind": "elicit", "cohort_id": cohort,
                      "params": {"config": {**small, "styles": ["plain", "expert"], "rationale_temperature": 1.0}}})
        rnd = elicit["result"]["round_id"]
        drafts = f.ok(f.client.get(f"/api/v1/rounds/{rnd}/drafts", headers=f.admin))["drafts"]
        by_question: dict[str, list[str]] = {}
        for d in drafts:
            by_question.setdefault(d["question_id"], []).append(d["id"])
        pairs = [ids for ids in by_question.values() if len(ids) >= 2]
        assert pairs, (drafts, elicit["result"])
        best, worst = pairs[0][:2]
        _, dev = f.device(cohort)   # one device: the first rationale right on 9 of 10 items, the other on 1
        f.ok(f.report(rnd, dev, [(d["id"], 10, 9 if d["id"] == best else 1 if d["id"] == worst else 5)
                                 for d in drafts]))

        align = run({"kind": "align", "cohort_id": cohort, "round_id": rnd,
                     "params": {"pairs": {"kinds": ["rationale"]},
                                "config": {"max_steps": 1, "batch_size": 1, "max_length": 512, "holdout_share": 0.0,
                                           "eval_pairs": 0, "device": "cpu", "warmup_ratio": 0.0}}})
        res = align["result"]
        assert res["outcome"] == "pairs", (res["reason"], [(d["id"], d["rationale"]) for d in drafts])
        name = serving.served_name(res["adapter"])
        assert res["n_pairs"] >= 1 and res["steps"] == 1 and res["serving"]["name"] == name
        gguf = Path(res["serving"]["gguf"])
        assert gguf.read_bytes()[:4] == b"GGUF"
        aliases = [m["model_alias"] for m in json.loads(config.read_text())["models"]]
        assert aliases == ["teacher", name]

        server.stop()      # llama.cpp servers load adapters at start: restart with the file the job wrote
        server.start()
        before = len(server.log.read_text(errors="replace"))
        tailor = run({"kind": "tailor", "cohort_id": cohort, "round_id": rnd,
                      "params": {"config": {**small, "check_samples": 0}}})
        assert tailor["result"]["n_examples"] >= 0
        log = server.log.read_text(errors="replace")[before:]
        assert str(gguf) in log   # llama.cpp loaded the cohort's GGUF LoRA to answer the tailor requests
        content = f.client.get(f"/api/v1/datasets/{tailor['result']['dataset_id']}/content", headers=f.admin).text
        assert all(json.loads(x)["provenance"]["adapter"] == name for x in content.splitlines())
    finally:
        server.stop()
