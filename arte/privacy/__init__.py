"""Privacy of preference reports: scores only, local differential privacy, accounting, estimation.

A device's report holds per draft only ``n_items`` and ``n_correct`` (never text, answers, item ids or
per-item results). Under a :class:`PrivacyPolicy` those counts are noised on the device so that the
report is (ε, δ)-differentially private with respect to any ONE of the device's validation items (its
text and label), for any drafts the server sends; a per-device :class:`PrivacyAccountant` refuses to
report once the device's total budget would be exceeded; the server inverts the noise without bias
(:func:`estimate_report`), pools devices with variances (:func:`pool_estimates`) and uses a cohort only
when k distinct devices reported (:func:`cohort_threshold`).

Modules: :mod:`~arte.privacy.mechanisms` (policy, calibration, randomized response / Laplace / analytic
Gaussian, with the sensitivity argument), :mod:`~arte.privacy.accounting` (basic and zCDP composition),
:mod:`~arte.privacy.report` (the device side: scores only), :mod:`~arte.privacy.estimates` (the server
side). Pure numpy; every random draw comes from an injected ``numpy.random.Generator``.
"""

from arte.privacy.accounting import Charge, PrivacyAccountant, Spent, zcdp_epsilon
from arte.privacy.estimates import (
                                    CohortDecision,
                                    DraftEstimate,
                                    PooledDraft,
                                    cohort_threshold,
                                    debias_counts,
                                    debias_report,
                                    estimate_report,
                                    pool_accuracy,
                                    pool_estimates,
)
from arte.privacy.mechanisms import (
                                    MECHANISMS,
                                    Calibration,
                                    PrivacyPolicy,
                                    analytic_gaussian_sigma,
                                    calibrate,
                                    classic_gaussian_sigma,
                                    gaussian_delta,
                                    privatize,
                                    randomized_response,
)
from arte.privacy.report import SCORE_FIELDS, ReportScores, check_scores_only, policy_for_round, report_scores

__all__ = [
    "Calibration", "Charge", "CohortDecision", "DraftEstimate", "MECHANISMS", "PooledDraft",
    "PrivacyAccountant", "PrivacyPolicy", "ReportScores", "SCORE_FIELDS", "Spent", "analytic_gaussian_sigma",
    "calibrate", "check_scores_only", "classic_gaussian_sigma", "cohort_threshold", "debias_counts",
    "debias_report", "estimate_report", "gaussian_delta", "policy_for_round", "pool_accuracy",
    "pool_estimates", "privatize", "randomized_response", "report_scores", "zcdp_epsilon",
]
