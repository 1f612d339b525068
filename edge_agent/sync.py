"""Store-and-forward: reports and metrics go to the outbox first, then to the server, exactly once.

Contract: :func:`queue_report` / :func:`queue_metrics` encode a wire message once and store that exact body
in the outbox with its idempotency key (queueing the same key twice is a no-op). :func:`deliver` sends
every pending message, oldest first, through :meth:`ServerClient.post` (which retries); on success the
receipt is stored and the exact body is written to the sent log, in one transaction. If the server cannot
be reached the message stays pending for the next call: the same body with the same key is sent again,
and the server answers a re-send with the stored receipt (``duplicate: true``), so a report arrives
exactly once however often the connection drops. A message the server refuses for good (a 4xx other
than 401/403) is marked rejected, kept, and not sent again; an auth failure stops delivery and raises.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from arte.wire import Metrics, MetricsReceipt, Report, ReportReceipt, to_wire
from edge_agent.client import ServerClient, encode
from edge_agent.errors import AuthError, NetworkError, ServerError
from edge_agent.state import State

__all__ = ["Delivery", "queue_report", "queue_metrics", "deliver"]

log = logging.getLogger(__name__)
_RECEIPTS = {"report": ReportReceipt, "metrics": MetricsReceipt}


@dataclass
class Delivery:
    """What one :func:`deliver` call did."""

    delivered: list[dict[str, Any]] = field(default_factory=list)   # receipts
    rejected: list[dict[str, Any]] = field(default_factory=list)    # {"idempotency_key", "error"}
    pending: int = 0
    error: str | None = None                                        # why delivery stopped early

    def to_dict(self) -> dict[str, Any]:
        return {"delivered": self.delivered, "rejected": self.rejected, "pending": self.pending,
                "error": self.error}


def queue_report(state: State, round_id: str, report: Report) -> int:
    """Put a round's report in the outbox (its body is what will be sent, byte for byte)."""
    return state.enqueue("report", f"/rounds/{round_id}/reports", report.idempotency_key, encode(report))


def queue_metrics(state: State, metrics: Metrics) -> int:
    """Put training metrics in the outbox."""
    return state.enqueue("metrics", "/metrics", metrics.idempotency_key, encode(metrics))


def deliver(state: State, client: ServerClient) -> Delivery:
    """Send pending outbox messages until done or the server is unreachable."""
    out = Delivery()
    for item in state.pending():
        try:
            sent = client.post(item.path, item.body)
            receipt = client.parse(_RECEIPTS[item.kind], sent)
        except NetworkError as e:
            state.mark_attempt(item.id, str(e))
            out.error = str(e)
            break
        except AuthError:
            raise
        except ServerError as e:
            with state.transaction():
                state.mark_rejected(item.id, str(e))
                state.log_sent(item.kind, "POST", item.path, item.body, e.status, str(e))
            log.warning("the server refused %s %s: %s", item.kind, item.idempotency_key, e)
            out.rejected.append({"idempotency_key": item.idempotency_key, "error": str(e)})
            continue
        data = to_wire(receipt)
        with state.transaction():
            state.mark_delivered(item.id, data)
            state.log_sent(item.kind, "POST", item.path, item.body, sent.status, sent.response)
        out.delivered.append(data)
    out.pending = len(state.pending())
    return out
