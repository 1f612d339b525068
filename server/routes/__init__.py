"""One APIRouter per resource, all under ``/api/v1`` (see :data:`ROUTERS`)."""

from server.routes import (
    adapters,
    aggregates,
    campaigns,
    cohorts,
    dashboard,
    datasets,
    devices,
    enroll,
    health,
    jobs,
    metrics,
    reports,
    rounds,
    tasks,
    telemetry,
    tokens,
)

ROUTERS = [
    health.router,
    enroll.router,
    devices.router,
    rounds.router,
    reports.router,
    datasets.router,
    metrics.router,
    tasks.router,
    cohorts.router,
    tokens.router,
    jobs.router,
    aggregates.router,
    dashboard.router,
    telemetry.router,
    campaigns.router,
    adapters.router,
]

__all__ = ["ROUTERS"]
