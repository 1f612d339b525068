"""The Grafana dashboard shipped in ``docs/grafana`` queries only series that ``/metrics`` exposes, and is
a well-formed dashboard (unique panel ids, each panel on the 24-column grid with a query)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.support.dashboard_support import seed_fleet
from tests.support.server_support import Fleet, scrape

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "arte-edge-fleet.json"


def test_every_panel_queries_series_the_server_exposes(sqlite_fleet: Fleet) -> None:
    f = sqlite_fleet
    seed_fleet(f.client, f.admin, f.clock, f.settings, f.sessions)   # every counter gets a sample
    f.client.get("/api/v1/datasets/dat_" + "0" * 32 + "/content", headers=f.admin)
    exposed = {name for name, _ in scrape(f)}
    dash = json.loads(DASHBOARD.read_text())
    panels = dash["panels"]
    assert len({p["id"] for p in panels}) == len(panels) and dash["uid"] == "arte-edge-fleet"
    queried = set()
    for p in panels:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and p["targets"], p["title"]
        for t in p["targets"]:
            queried |= set(re.findall(r"\barte_[a-z_]+", t["expr"]))
    missing = sorted(q for q in queried if q not in exposed)
    assert not missing, f"the dashboard queries series /metrics does not expose: {missing}"
    assert {"arte_campaigns", "arte_jobs", "arte_reports_received_total", "arte_db_up"} <= queried
