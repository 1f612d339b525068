"""Item selection with a two-parameter logistic (2PL) IRT model.

The paper fits 2PL IRT over 5 models × 0–3 shots and keeps the 40 most discriminative of 100 items. Here
the drafts themselves are the respondents: the draft × item outcome matrix from a first round is fitted,
and the top-k items by |discrimination| are kept for later rounds (fewer items, same ranking of drafts),
with a label-balance check when the items' labels are given (:func:`select_items`). Why both: with a
student that copies the demonstration's answer, a draft's "ability" is the share of items carrying its
answer's label, so the items of the drafts' majority label get a positive discrimination and the others a
negative one; ranking by signed discrimination would keep one label only, and even |discrimination|
favours the majority label (the prior pulls towards +1).

Model: P(draft i answers item j correctly) = σ(a_j (θ_i − b_j)), θ_i the draft's ability, a_j the item's
discrimination, b_j its difficulty. Fitted by joint maximum a-posteriori with Gaussian priors
θ ~ N(0, 1), a ~ N(1, σ_a²), b ~ N(0, σ_b²) (the priors fix the scale and keep items that every draft
gets right or wrong finite), by full-batch Adam on the exact gradient. Missing outcomes are NaN.

:func:`choose_items` is the whole step on a draft × item matrix (fit, top-k, balance check, agreement), as
the pipeline and the experiment use it (``--select-items k``).

``selection_agreement`` reports how often the best and the worst draft of each group (the rationales of
one question, or all drafts) are the same when judged on the top-k items as on all items: a draft chosen
on the top-k items "agrees" when its all-items accuracy ties the group's best (or worst).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from arte.errors import ConfigError

__all__ = ["IRTFit", "fit_2pl", "select_items", "selection_agreement", "choose_items"]


@dataclass(frozen=True)
class IRTFit:
    """Fitted 2PL parameters: ``theta`` per respondent (draft), ``a`` and ``b`` per item."""

    theta: np.ndarray
    a: np.ndarray
    b: np.ndarray
    log_posterior: float
    iterations: int

    def prob(self) -> np.ndarray:
        """Model probability of a correct answer, respondents × items."""
        return _sigmoid(self.a[None, :] * (self.theta[:, None] - self.b[None, :]))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def fit_2pl(outcomes: np.ndarray, *, sigma_a: float = 1.0, sigma_b: float = 2.0, lr: float = 0.05,
            max_iter: int = 3000, tol: float = 1e-7) -> IRTFit:
    """Fit 2PL to a respondents × items matrix of 0/1 (NaN = missing) by MAP with Adam."""
    y = np.asarray(outcomes, dtype=np.float64)
    if y.ndim != 2 or y.shape[0] < 2 or y.shape[1] < 1:
        raise ConfigError("outcomes", f"need a 2-D matrix with >= 2 respondents, got shape {y.shape}")
    mask = ~np.isnan(y)
    if not np.all(np.isin(y[mask], (0.0, 1.0))):
        raise ConfigError("outcomes", "values must be 0, 1 or NaN")
    y = np.where(mask, y, 0.0)
    n, m = y.shape
    p_item = (y.sum(0) + 0.5) / (mask.sum(0) + 1.0)
    p_resp = (y.sum(1) + 0.5) / (mask.sum(1) + 1.0)
    params = [np.log(p_resp / (1 - p_resp)), np.ones(m), -np.log(p_item / (1 - p_item))]  # theta, a, b
    moments = [(np.zeros_like(p), np.zeros_like(p)) for p in params]
    b1, b2, eps = 0.9, 0.999, 1e-8
    prev = -np.inf
    it = 0
    for it in range(1, max_iter + 1):
        theta, a, b = params
        z = a[None, :] * (theta[:, None] - b[None, :])
        p = _sigmoid(z)
        r = (y - p) * mask                     # d loglik / dz
        ll = np.sum(mask * (y * z - np.logaddexp(0.0, z)))
        logpost = ll - 0.5 * np.sum(theta ** 2) - 0.5 * np.sum((a - 1) ** 2) / sigma_a ** 2 \
            - 0.5 * np.sum(b ** 2) / sigma_b ** 2
        grads = [(r * a[None, :]).sum(1) - theta,
                 (r * (theta[:, None] - b[None, :])).sum(0) - (a - 1) / sigma_a ** 2,
                 -(r * a[None, :]).sum(0) - b / sigma_b ** 2]
        for k, g in enumerate(grads):   # gradient ascent with Adam
            m1, m2 = moments[k]
            m1 = b1 * m1 + (1 - b1) * g
            m2 = b2 * m2 + (1 - b2) * g * g
            moments[k] = (m1, m2)
            params[k] = params[k] + lr * (m1 / (1 - b1 ** it)) / (np.sqrt(m2 / (1 - b2 ** it)) + eps)
        if abs(logpost - prev) < tol * max(1.0, abs(logpost)):
            break
        prev = logpost
    return IRTFit(theta=params[0], a=params[1], b=params[2], log_posterior=float(prev), iterations=it)


def select_items(fit: IRTFit, k: int, labels: Sequence[str] | None = None) -> np.ndarray:
    """Indices of the ``k`` most discriminative items (highest |a|), most discriminative first.

    With ``labels`` (one per item) the choice is label-balanced where the items allow: labels take turns,
    each taking its most discriminative item not yet kept (the turn's labels in order of that item's
    |a|), and a label with no item left drops out; so the kept labels' counts differ by at most one
    unless a label has too few items.
    """
    if not 1 <= k <= len(fit.a):
        raise ConfigError("k", f"must be in [1, {len(fit.a)}], got {k}")
    order = np.argsort(-np.abs(fit.a), kind="stable")
    if labels is None:
        return order[:k]
    if len(labels) != len(fit.a):
        raise ConfigError("labels", f"need one label per item ({len(fit.a)}), got {len(labels)}")
    queues: dict[str, list[int]] = {}
    for i in order:
        queues.setdefault(labels[i], []).append(int(i))
    kept: list[int] = []
    for turn in range(max(len(q) for q in queues.values())):
        heads = [q[turn] for q in queues.values() if turn < len(q)]
        kept += sorted(heads, key=lambda i: -abs(fit.a[i]))[:k - len(kept)]
        if len(kept) == k:
            break
    return np.array(sorted(kept, key=lambda i: -abs(fit.a[i])), dtype=np.int64)


def selection_agreement(outcomes: np.ndarray, keep: Sequence[int],
                        groups: Sequence[str] | None = None) -> dict[str, float]:
    """Share of groups whose best and worst draft, chosen on the kept items, are also best/worst on all.

    Returns ``{"best": …, "worst": …, "groups": n}``; groups of one draft are skipped.
    """
    y = np.asarray(outcomes, dtype=np.float64)
    full = np.nanmean(y, axis=1)
    part = np.nanmean(y[:, list(keep)], axis=1)
    labels = list(groups) if groups is not None else ["all"] * len(y)
    if len(labels) != len(y):
        raise ConfigError("groups", f"need one label per draft ({len(y)}), got {len(labels)}")
    best = worst = n = 0
    for g in dict.fromkeys(labels):
        idx = np.array([i for i, lab in enumerate(labels) if lab == g])
        if len(idx) < 2:
            continue
        n += 1
        best += full[idx[np.argmax(part[idx])]] == full[idx].max()
        worst += full[idx[np.argmin(part[idx])]] == full[idx].min()
    if n == 0:
        return {"best": float("nan"), "worst": float("nan"), "groups": 0}
    return {"best": best / n, "worst": worst / n, "groups": n}


def choose_items(outcomes: np.ndarray, item_ids: Sequence[str], k: int, labels: Sequence[str] | None = None,
                 groups: Sequence[str] | None = None) -> dict:
    """Fit 2PL to a drafts × items 0/1 matrix and keep the top-``k`` items by |discrimination|, label-balanced
    when ``labels`` (one per item) are given (:func:`select_items`). Returns a JSON-ready record:
    ``selected`` (item ids, most discriminative first), ``discrimination``, ``n_items``, ``n_drafts``,
    ``agreement`` (:func:`selection_agreement` over ``groups``, e.g. the drafts' questions) and, with labels,
    ``labels`` / ``labels_of_all`` (counts) and ``balanced``: whether the kept labels' counts differ by at
    most one (False only when a label has too few items)."""
    y = np.asarray(outcomes, dtype=float)
    if y.ndim != 2 or y.shape[1] != len(item_ids):
        raise ConfigError("item_ids", f"need one id per column of the {y.shape} matrix, got {len(item_ids)}")
    fit = fit_2pl(y)
    kept = select_items(fit, k, labels)
    agree = selection_agreement(y, kept, groups)
    record = {"selected": [item_ids[i] for i in kept], "n_items": len(item_ids), "n_drafts": int(y.shape[0]),
              "discrimination": [round(float(fit.a[i]), 4) for i in kept],
              "agreement": {key: (None if isinstance(v, float) and np.isnan(v) else v) for key, v in agree.items()}}
    if labels is not None:
        kept_labels: dict[str, int] = {}
        for i in kept:
            kept_labels[labels[i]] = kept_labels.get(labels[i], 0) + 1
        every: dict[str, int] = {}
        for lab in labels:
            every[lab] = every.get(lab, 0) + 1
        counts = [kept_labels.get(lab, 0) for lab in every]
        record.update(labels=kept_labels, labels_of_all=every, balanced=max(counts) - min(counts) <= 1)
    return record
