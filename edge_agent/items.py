"""Which private validation items the device scores on: all of them, or the most discriminative ones.

After a round scored on every item with at least ``irt_min_drafts`` drafts, the device fits a 2PL IRT model
(:mod:`arte.irt`) on its own draft × item outcome matrix and keeps the profile's ``irt_keep_items`` items
with the highest |discrimination|, label-balanced (:func:`arte.irt.select_items` with the items' labels),
for later rounds: fewer items, nearly the same ranking of drafts (the paper keeps 40 of 100). Without the
balance a student that copies the demonstration's answer would leave the device scoring on one label's
items, where a draft's score is just whether its answer has that label. The fit, the matrix and the choice stay on the device, in ``irt.json`` (mode
0600) in the state dir; ``edge-agent status`` shows how often the best and the worst draft of a question
agree between the kept items and all items.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from arte.irt import fit_2pl, select_items, selection_agreement
from arte.scoring import ScoreResult
from arte.tasks import Example, label_counts

__all__ = ["items_for_round", "learn_from_round", "irt_status"]

log = logging.getLogger(__name__)
_FILE = "irt.json"


def _load(state_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((state_dir / _FILE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as e:
        log.warning("ignoring unreadable item selection %s: %s", state_dir / _FILE, e)
        return None


def items_for_round(state_dir: Path, validation: Sequence[Example], max_items: int) -> list[Example]:
    """The items to score this round: the selected ones when a selection exists for these items, else the
    first ``max_items`` (label-balanced as far as the data allow: the validation split is in
    :func:`arte.tasks.balanced_order`)."""
    items = list(validation[:max_items])
    sel = _load(state_dir)
    if sel and sel.get("selected"):
        by_id = {e.id: e for e in items}
        chosen = [by_id[i] for i in sel["selected"] if i in by_id]
        if len(chosen) == len(sel["selected"]):
            return chosen
        log.info("item selection no longer matches the private data; scoring on all items")
    return items


def learn_from_round(state_dir: Path, result: ScoreResult, groups: Sequence[str], keep: int,
                     min_drafts: int, labels: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """Fit 2PL on a full round's outcomes and store the top-``keep`` items (label-balanced when ``labels``
    maps the item ids to their labels); returns what was stored, or None when nothing is learnt (selection
    off, already selected, too few drafts, or a partial round)."""
    if keep <= 0 or not result.complete or len(result.item_ids) <= keep:
        return None
    if (_load(state_dir) or {}).get("selected"):
        return None
    y = np.asarray(result.outcomes, dtype=float)
    if y.shape[0] < min_drafts:
        return None
    fit = fit_2pl(y)
    item_labels = [labels[i] for i in result.item_ids] if labels is not None else None
    kept = select_items(fit, keep, item_labels)
    agree = selection_agreement(y, kept, list(groups)[: y.shape[0]])
    record = {"selected": [result.item_ids[i] for i in kept], "n_items": len(result.item_ids),
              "n_drafts": int(y.shape[0]), "agreement": agree,
              "discrimination": [round(float(fit.a[i]), 4) for i in kept]}
    if item_labels is not None:
        record["labels"] = label_counts(item_labels[i] for i in kept)
        record["labels_of_all"] = label_counts(item_labels)
    path = state_dir / _FILE
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(record, f)
    os.replace(tmp, path)
    log.info("kept %d of %d items by IRT discrimination (best/worst agreement %.2f/%.2f over %d questions)",
             keep, len(result.item_ids), agree["best"], agree["worst"], agree["groups"])
    return record


def irt_status(state_dir: Path) -> dict[str, Any] | None:
    """What ``status`` shows: counts and agreement, not the item ids (they are private)."""
    sel = _load(state_dir)
    if not sel:
        return None
    return {"kept_items": len(sel.get("selected", [])), "of_items": sel.get("n_items"),
            "fitted_on_drafts": sel.get("n_drafts"), "agreement": sel.get("agreement"),
            "kept_labels": sel.get("labels")}
