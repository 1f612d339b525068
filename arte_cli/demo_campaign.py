"""``arte demo --rounds N``: the demo's fleet run as a campaign, several rounds with nobody driving them.

Contract: :func:`run_campaign` creates one campaign for the demo's cohort through the admin API (the
policy: the same drafts, DPO and tailoring settings as the one-round demo; a round closes when every
device reported) and then only lets the devices iterate (``edge-agent run --once`` on all of them at
once, through ``iterate``) whenever the campaign's round collects reports; the server's job worker runs
every other step (elicit, close, aggregate, align, tailor, next round). Each device's iteration in round
n + 1 also fine-tunes on round n's dataset; one last iteration after the campaign trains on the last one.
It logs every transition of the campaign as it happens and returns the campaign (rounds, lineage,
figures). :func:`campaign_lines` is the summary's table of rounds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from arte.errors import ArteError

__all__ = ["CampaignDemoError", "run_campaign", "campaign_lines"]


class CampaignDemoError(ArteError):
    """The campaign did not complete (paused after failures, stopped, or out of time)."""


def run_campaign(fleet: Any, cohort_id: str, rounds: int, policy: dict[str, Any], devices: list[dict[str, Any]],
                 iterate: Callable[[str, str], list[dict[str, Any]]], log: Callable[[str], None], *,
                 timeout_s: float, poll_s: float = 2.0, retry_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic, wait: Callable[[float], None] = time.sleep
                 ) -> dict[str, Any]:
    """Run the campaign to its end (see the module docstring); ``iterate(step, part)`` runs every device
    once and returns ``part`` of their iterations."""
    camp = fleet.api("POST", "/campaigns", json={"cohort_id": cohort_id, "rounds": rounds, "policy": policy})
    cid, seen, t0 = camp["campaign_id"], 0, clock()
    iterated: dict[str, float] = {}   # round id -> when the devices last iterated on it
    scoring: list[list[dict[str, Any]]] = []
    while True:
        fleet.check_alive("the campaign")
        camp = fleet.api("GET", f"/campaigns/{cid}?events=1000")
        for e in camp["events"][seen:]:
            log(f"  campaign v{e['version']}: {e['message']}")
        seen = len(camp["events"])
        if camp["state"] != "active":
            break
        if clock() - t0 > timeout_s:
            raise CampaignDemoError(f"campaign {cid} still at round {camp['round_no']}, step {camp['step']} after "
                                    f"{timeout_s:.0f} s")
        rid = camp["round_id"]
        if camp["step"] == "collect" and (rid not in iterated or clock() - iterated[rid] > retry_s):
            # devices that reported already do nothing; one that could not gets another chance
            iterated[rid] = clock()
            scoring.append(iterate(f"round{camp['round_no']}", "round"))
        else:
            wait(poll_s)
    if camp["state"] != "completed":
        raise CampaignDemoError(f"campaign {cid} is {camp['state']}: {camp.get('reason')}")
    camp["training"] = iterate("train-last", "dataset")   # every device fine-tunes on the last dataset
    camp = {**fleet.api("GET", f"/campaigns/{cid}?events=1000"), "training": camp["training"],
            "scoring": scoring}
    return camp


def _pct(x: Any) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def campaign_lines(camp: dict[str, Any]) -> list[str]:
    """The campaign's rounds: reports, alignment, DPO held-out reward accuracy, dataset, kept, accuracy."""
    lines = [f"  campaign {camp['campaign_id']}: {camp['state']}, {len(camp['history'])} rounds",
             (f"  {'round':>5} {'reports':>8} {'align':>10} {'pairs':>6} {'DPO held-out acc':>17} {'examples':>9} "
              f"{'kept':>6} {'0-shot before->after':>21} {'adapter <- parent':>30}")]
    for r in camp["history"]:
        dpo = (f"{_pct(r['reward_accuracy_before'])}->{_pct(r['reward_accuracy_after'])}"
               if r["reward_accuracy_after"] is not None else "-")
        acc = f"{_pct(r['before_zero_shot'])}->{_pct(r['after_zero_shot'])}" if r["n_metrics"] else "-"
        lineage = f"{(r['adapter_id'] or 'none')[:16]} <- {(r['parent_adapter_id'] or 'base')[:16]}"
        lines.append(f"  {r['round_no']:>5} {r['n_reports']:>8} {r['align'] or '-':>10} {r['n_pairs'] or 0:>6} "
                     f"{dpo:>17} {r['dataset_examples'] or '-':>9} {r['n_kept']:>3}/{r['n_metrics']:<2} "
                     f"{acc:>21} {lineage:>30}")
    return lines
