"""``edge-agent status``: the agent's state, its last contact and exactly what it last sent.

Contract: :func:`status` reads the state dir (never writes) and returns one JSON-able document: identity,
server, the private data path (a local path; the data never leave), outbox, pending sends, the last
``limit`` sent bodies as sent (secrets redacted when they were logged), the active adapter, the privacy
budget spent, the journal and the IRT item selection. :func:`status_lines` is its human rendering.
"""

from __future__ import annotations

import json
from typing import Any

from edge_agent.items import irt_status
from edge_agent.privacy import budget_status
from edge_agent.state import State

__all__ = ["status", "status_lines"]


def status(st: State, limit: int) -> dict[str, Any]:
    conf = st.settings()
    sent = st.sent(limit)
    for m in sent:
        m["body"] = json.loads(m["body"])
    return {
        "state_dir": str(st.dir), "enrolled": "device_id" in conf,
        "device_id": conf.get("device_id"), "cohort_id": conf.get("cohort_id"),
        "profile": conf.get("profile"), "server_url": conf.get("server_url"),
        "data_path": conf.get("data_path"), "last_contact_at": conf.get("last_contact_at"),
        "outbox": st.outbox_counts(),
        "pending": [{"kind": i.kind, "path": i.path, "idempotency_key": i.idempotency_key,
                     "attempts": i.attempts, "last_error": i.last_error} for i in st.pending()],
        "last_sent": sent, "active_adapter": st.active_adapter(),
        "privacy": {"epsilon_spent": st.privacy_spent(), "charges": st.privacy_charges(), **budget_status(st)},
        "journal": st.journals(),
        "item_selection": irt_status(st.dir),
    }


def status_lines(data: dict[str, Any]) -> str:
    lines = [f"state: {data['state_dir']}",
             f"device: {data['device_id'] or 'not enrolled'} (cohort {data['cohort_id']}, profile {data['profile']})",
             f"server: {data['server_url']}, last contact {data['last_contact_at'] or 'never'}",
             f"private data (local only, never sent): {data['data_path'] or 'not configured'}",
             f"outbox: {data['outbox'] or 'empty'}",
             f"active adapter: {data['active_adapter']['version'] if data['active_adapter'] else 'none'}",
             _privacy_line(data["privacy"]),
             _items_line(data["item_selection"]),
             "last sent (exact bodies, newest first; secrets redacted):"]
    for m in data["last_sent"]:
        lines.append(f"  {m['at']} {m['method']} {m['path']} -> {m['status']}")
        lines.append("    " + json.dumps(m["body"], sort_keys=True))
    return "\n".join(lines)


def _items_line(sel: dict[str, Any] | None) -> str:
    if not sel:
        return "items: all validation items (no IRT selection yet)"
    a = sel["agreement"]
    return (f"items: {sel['kept_items']} of {sel['of_items']} kept by IRT (fitted on {sel['fitted_on_drafts']} "
            f"drafts; best/worst draft agreement {a['best']:.2f}/{a['worst']:.2f} over {a['groups']} questions)")


def _privacy_line(p: dict[str, Any]) -> str:
    budget = "no limit" if p["budget"]["epsilon"] is None else f"{p['budget']['epsilon']:g}"
    if not p["n_reports"]:
        return f"privacy: nothing spent (epsilon budget {budget})"
    spent = p.get("spent", {"epsilon": p["epsilon_spent"], "method": "basic"})
    eps = "unbounded" if spent["epsilon"] is None else f"{spent['epsilon']:.4g}"
    return (f"privacy: epsilon spent {eps} of {budget} ({spent['method']} composition, "
            f"{p['n_reports']} noised report(s); sum of epsilons {p['basic']['epsilon']:g})")
