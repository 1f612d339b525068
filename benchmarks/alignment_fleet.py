"""The planted preference through the fleet: N simulated devices report planted scores to the real server.

:func:`fleet_scorer` returns an :data:`arte.selftest.Scorer` for :func:`arte.selftest.alignment_selftest`.
Each call opens a round (the drafts, as the admin API takes them) in a cohort with the given local-DP
policy and k; every simulated device enrolls with a one-time token, scores the drafts with
:func:`arte.planted.planted_scores` on its own ``items_per_device`` items (its own draws), turns them
into a report with :func:`arte.privacy.report_scores` (the device agent's path: its accountant, the
mechanism's noise) and POSTs it to ``/api/v1/rounds/{id}/reports``; then the server's own aggregate
(:func:`server.reports.compute_aggregate`, the one its align job reads) gives the estimates that enter
pair selection (:meth:`server.aggregation.CohortAggregate.alignment_estimates`: only drafts scored by k
devices, with the pooled variance, noise included).

The server is :func:`server.app.create_app` on a migrated SQLite file, driven through FastAPI's
``TestClient`` (the app's routes, validation, auth and storage in process; no socket). Devices report
in the round's scoring mode (``generate``); the planted rule stands in for the student.
"""

from __future__ import annotations

import math
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from fastapi.testclient import TestClient

from arte import wire
from arte.drafts import Draft
from arte.pair_rules import ScoreEstimate
from arte.pairs import select_pairs
from arte.planted import PlantedRule, holds, planted_scores
from arte.privacy import PrivacyAccountant, PrivacyPolicy, report_scores
from server import aggregates, db, security
from server.app import create_app
from server.settings import ServerSettings
from server.tables import AdminKey, Round, new_id

__all__ = ["FleetServer", "fleet_scorer", "policy"]

MODE = "generate"


def policy(mechanism: str, epsilon: float, delta: float = 1e-6) -> PrivacyPolicy:
    """The devices' policy: none for ε = ∞, else ``mechanism`` at ε per round (δ only for gaussian)."""
    if math.isinf(epsilon) or mechanism == "none":
        return PrivacyPolicy()
    return PrivacyPolicy(mechanism, epsilon, delta if mechanism == "gaussian" else 0.0,
                         total_delta=delta if mechanism == "gaussian" else 0.0)


class FleetServer:
    """The fleet server in process, with an admin key, for simulated devices."""

    def __init__(self, data_dir: Path) -> None:
        shutil.rmtree(data_dir, ignore_errors=True)   # a fresh fleet per run: a rerun in the same work dir
        data_dir.mkdir(parents=True)                  # must not meet the tasks and cohorts of the last one
        self.settings = ServerSettings(data_dir=data_dir, database_url=f"sqlite:///{data_dir / 'arte.db'}",
                                       rate_limit_per_s=0)
        self.engine = db.make_engine(self.settings.resolved_database_url(), schema=None)
        db.upgrade(self.engine)
        self.sessions = db.make_sessionmaker(self.engine)
        row_id = new_id("adm")
        key, key_hash = security.new_secret("ak", row_id)

        with db.transaction(self.sessions) as s:
            s.add(AdminKey(id=row_id, key_hash=key_hash, created_at=datetime.now(timezone.utc)))
        self.admin = {"Authorization": f"Bearer {key}"}
        self.client = TestClient(create_app(self.settings, engine=self.engine), raise_server_exceptions=True)
        self.n = 0

    def call(self, method: str, path: str, body: Any = None, headers: Mapping[str, str] | None = None,
             status: int = 201) -> Any:
        r = self.client.request(method, f"{wire.API_PREFIX}{path}", json=body, headers=dict(headers or self.admin))
        if r.status_code != status:
            raise RuntimeError(f"{method} {path}: {r.status_code} {r.text[:400]}")
        return r.json()

    def cohort(self, task_name: str, k: int, pol: PrivacyPolicy) -> str:
        self.n += 1
        task = self.call("POST", "/tasks", {"name": f"{task_name}-{self.n}", "instruction": "planted"})["task_id"]
        privacy: dict[str, Any] = {"mechanism": pol.mechanism}
        if pol.mechanism != "none":
            privacy["epsilon"] = pol.epsilon
            if pol.mechanism == "gaussian":
                privacy["delta"] = pol.delta
        return self.call("POST", "/cohorts", {"name": f"planted-{self.n}", "task_id": task, "student_model": "default",
                                              "profile_class": "laptop-cpu", "min_devices": k,
                                              "privacy": privacy})["cohort_id"]

    def enroll(self, cohort: str, i: int) -> dict[str, str]:
        token = self.call("POST", "/tokens", {"cohort_id": cohort})["token"]
        r = self.call("POST", "/enroll", {"token": token, "device_name": f"planted-{i}", "profile_id": "laptop-cpu",
                                          "hardware": {"simulated": True}}, headers={})
        return {"Authorization": f"Bearer {r['device_key']}"}

    def estimates(self, round_id: str) -> tuple[dict[str, ScoreEstimate], dict[str, Any]]:
        """The server's aggregate of the round: the estimates its align job would pair, and a summary."""

        with db.transaction(self.sessions) as s:
            rnd = s.get(Round, round_id)
            agg = aggregates.compute_aggregate(s, rnd)
            est = agg.alignment_estimates()
            return est, {"n_devices": agg.n_devices, "may_align": agg.may_align, "eligible": len(est),
                         "excluded": dict(agg.excluded)}

    def close(self) -> None:
        self.client.close()
        self.engine.dispose()


def fleet_scorer(server: FleetServer, *, n_devices: int, items_per_device: int, pol: PrivacyPolicy,
                 k: int | None = None, log: list[dict[str, Any]] | None = None) -> Any:
    """A scorer that sends the planted scores of ``n_devices`` devices through ``server`` (see the module
    docstring); k defaults to min(n_devices, 10). ``log`` collects each round's aggregate summary."""
    k = k if k is not None else min(n_devices, 10)

    def score(drafts: Sequence[Draft], rule: PlantedRule, rng: np.random.Generator) -> dict[str, ScoreEstimate]:
        cohort = server.cohort(rule.name, k, pol)
        devices = [server.enroll(cohort, i) for i in range(n_devices)]
        round_id = server.call("POST", "/rounds", {"cohort_id": cohort, "drafts": [d.to_dict() for d in drafts],
                                                   "mode": MODE, "min_items": 1})["round_id"]
        ids = {d.id for d in drafts}
        for i, headers in enumerate(devices):
            res = planted_scores(drafts, rule, items_per_device, rng)
            rep = report_scores(res, pol, accountant=PrivacyAccountant(), round_id=round_id, rng=rng, draft_ids=ids)
            body = wire.Report(idempotency_key=f"{round_id}-{i}", scores=rep.scores, mode=MODE, privacy=rep.privacy)
            server.call("POST", f"/rounds/{round_id}/reports", wire.to_wire(body), headers=headers, status=200)
        est, summary = server.estimates(round_id)
        if log is not None:
            log.append({"rule": rule.name, "round_id": round_id, "devices": n_devices, "k": k,
                        "mechanism": pol.mechanism, "epsilon": pol.epsilon, **summary})
        return est

    return score


def fleet_signal(server: FleetServer, task: Any, drafts: Sequence[Draft], seeds: Sequence[Any], rule: PlantedRule, *,
                 devices: Sequence[int], epsilons: Sequence[float], mechanism: str, items_per_device: int,
                 pair_config: Any, seed: int = 0) -> list[dict[str, Any]]:
    """Without a model: per (devices, ε), the pairs the server's aggregate makes from planted reports, and
    how many point the rule's way (chosen has the property, rejected lacks it) or the other way: the
    signal DPO would be given through the fleet."""

    rows = []
    for n_dev in devices:
        for eps in epsilons:
            pol = policy(mechanism, eps)
            rounds: list[dict[str, Any]] = []
            sc = fleet_scorer(server, n_devices=n_dev, items_per_device=items_per_device, pol=pol, log=rounds)
            rng = np.random.default_rng([seed, n_dev, int(min(eps, 1e6) * 1000)])
            pairs = select_pairs(task, drafts, sc(drafts, rule, rng), seeds, pair_config).pairs
            right = sum(holds(rule, p.chosen) and not holds(rule, p.rejected) for p in pairs)
            wrong = sum(holds(rule, p.rejected) and not holds(rule, p.chosen) for p in pairs)
            rows.append({"devices": n_dev, "epsilon": None if math.isinf(eps) else eps, "mechanism": pol.mechanism,
                         "pairs": len(pairs), "right_way": right, "wrong_way": wrong,
                         "eligible_drafts": rounds[-1]["eligible"], "may_align": rounds[-1]["may_align"]})
    return rows
