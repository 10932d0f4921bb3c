"""The canary gate: from the numbers of a canary and its stable version to pass, fail or inconclusive.

    VersionSignals     what one version did over the analysis interval (monitor.signals measures it)
    GateThresholds     the limits (defaults below)
    evaluate_gate(canary, stable, thresholds) -> GateDecision(result, reasons, checks)

Rules, as Argo Rollouts reads an analysis: fewer than `min_requests` canary requests means
inconclusive (pause, measure again); any failed check means fail (abort: canary weight back to 0);
otherwise pass. A check that needs the stable version's numbers is inconclusive while the stable
version has too little traffic; checks whose signal the route does not produce (no logprobs, no
reference statistics, too little feedback) are skipped, not failed. Each check keeps its observed
value and threshold for the rollout history and the metrics.

Drift is judged canary against stable like every other check: when all traffic shifts, both
versions drift and the canary is not to blame (the drift alerts tell the operator). A feature fails
the canary when its PSI exceeds stable's PSI of the same feature by max_drift_psi or more; a feature
stable has no score for is judged on the canary's PSI alone.

    check             observed                           fails when
    min_requests      canary requests                    (inconclusive when < min_requests)
    error_ratio       canary errors / requests           > max_error_ratio
    p95_latency       canary p95 / stable p95            > max_p95_latency_ratio
    entropy_shift     |canary - stable| mean entropy     > max_entropy_shift_nats
    drift_psi         canary PSI - stable PSI, largest   >= max_drift_psi
                      over features
    live_accuracy     one-sided p, canary below stable   < accuracy_alpha
"""

from __future__ import annotations

import enum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from monitor.accuracy import two_proportion_z_test
from monitor.drift import PSI_SIGNIFICANT
from monitor.metrics import DriftFeature, GateResult

# Defaults shared by the canary gate, the alert rules (monitor/alerts.py) and the canary steps
# `route canary --steps` builds (router/policy.py), so that a default means one thing everywhere.
MAX_ERROR_RATIO = 0.05
MAX_ENTROPY_SHIFT_NATS = 0.3
MAX_DRIFT_PSI = PSI_SIGNIFICANT
MIN_REQUESTS = 20


class VersionSignals(BaseModel):
    """One version's numbers over an interval. None: the signal was not measured."""

    model_config = ConfigDict(frozen=True)

    requests: int = Field(ge=0)
    errors: int = Field(default=0, ge=0)
    p95_latency_s: float | None = Field(default=None, ge=0)
    mean_entropy_nats: float | None = Field(default=None, ge=0)
    drift_psi: dict[DriftFeature, Annotated[float, Field(ge=0)]] = Field(
        default_factory=dict, description="Current PSI of each scored drift feature."
    )
    feedback_correct: int = Field(default=0, ge=0)
    feedback_total: int = Field(default=0, ge=0)

    @property
    def error_ratio(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    @property
    def max_drift_psi(self) -> float | None:
        return max(self.drift_psi.values(), default=None)

    @property
    def accuracy_ratio(self) -> float | None:
        return self.feedback_correct / self.feedback_total if self.feedback_total else None


class GateThresholds(BaseModel):
    max_error_ratio: float = Field(
        default=MAX_ERROR_RATIO, gt=0, lt=1, description="Largest tolerated canary error ratio."
    )
    max_p95_latency_ratio: float = Field(
        default=1.5, gt=0, description="Largest tolerated canary p95 latency as a multiple of the stable one."
    )
    max_entropy_shift_nats: float = Field(
        default=MAX_ENTROPY_SHIFT_NATS,
        gt=0,
        description="Largest tolerated |canary - stable| mean token entropy.",
    )
    max_drift_psi: float = Field(
        default=MAX_DRIFT_PSI,
        gt=0,
        description="The canary fails when a feature's PSI is this much above stable's, or reaches it "
        "where stable has no score.",
    )
    min_requests: int = Field(
        default=MIN_REQUESTS, ge=1, description="Fewer canary requests than this: inconclusive."
    )
    accuracy_alpha: float = Field(
        default=0.05,
        gt=0,
        lt=1,
        description="Significance level of the canary-worse-than-stable accuracy test.",
    )
    min_feedback: int = Field(
        default=30, ge=1, description="Verdicts each version needs before accuracy is compared."
    )


class CheckOutcome(enum.StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"
    SKIPPED = "skipped"


class GateCheckName(enum.StrEnum):
    MIN_REQUESTS = "min_requests"
    ERROR_RATIO = "error_ratio"
    P95_LATENCY = "p95_latency"
    ENTROPY_SHIFT = "entropy_shift"
    DRIFT_PSI = "drift_psi"
    LIVE_ACCURACY = "live_accuracy"


class GateCheck(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: GateCheckName
    outcome: CheckOutcome
    observed: float | None = None
    threshold: float | None = None
    detail: str = ""


class GateDecision(BaseModel):
    model_config = ConfigDict(frozen=True)

    result: GateResult
    reasons: list[str]
    checks: list[GateCheck]

    def check(self, name: GateCheckName) -> GateCheck:
        return next(c for c in self.checks if c.name == name)


def _min_requests(canary: VersionSignals, t: GateThresholds) -> GateCheck:
    ok = canary.requests >= t.min_requests
    return GateCheck(
        name=GateCheckName.MIN_REQUESTS,
        outcome=CheckOutcome.PASS if ok else CheckOutcome.INCONCLUSIVE,
        observed=canary.requests,
        threshold=t.min_requests,
        detail=f"canary answered {canary.requests} requests (needs {t.min_requests})",
    )


def _error_ratio(canary: VersionSignals, t: GateThresholds) -> GateCheck:
    ratio = canary.error_ratio
    if ratio is None:
        return GateCheck(
            name=GateCheckName.ERROR_RATIO, outcome=CheckOutcome.INCONCLUSIVE, detail="no canary requests"
        )
    ok = ratio <= t.max_error_ratio
    return GateCheck(
        name=GateCheckName.ERROR_RATIO,
        outcome=CheckOutcome.PASS if ok else CheckOutcome.FAIL,
        observed=ratio,
        threshold=t.max_error_ratio,
        detail=f"canary error ratio {ratio:.3f} ({canary.errors}/{canary.requests}), limit {t.max_error_ratio}",
    )


def _p95_latency(canary: VersionSignals, stable: VersionSignals, t: GateThresholds) -> GateCheck:
    name = GateCheckName.P95_LATENCY
    if canary.p95_latency_s is None:
        return GateCheck(name=name, outcome=CheckOutcome.INCONCLUSIVE, detail="no canary latency measured")
    if stable.requests < t.min_requests or stable.p95_latency_s is None:
        return GateCheck(
            name=name,
            outcome=CheckOutcome.INCONCLUSIVE,
            detail=f"stable answered {stable.requests} requests (needs {t.min_requests}) to compare latency",
        )
    if stable.p95_latency_s == 0:
        ratio = 1.0 if canary.p95_latency_s == 0 else float("inf")
    else:
        ratio = canary.p95_latency_s / stable.p95_latency_s
    ok = ratio <= t.max_p95_latency_ratio
    return GateCheck(
        name=name,
        outcome=CheckOutcome.PASS if ok else CheckOutcome.FAIL,
        observed=ratio,
        threshold=t.max_p95_latency_ratio,
        detail=f"canary p95 {canary.p95_latency_s:.3f}s is {ratio:.2f}x stable's "
        f"{stable.p95_latency_s:.3f}s, limit {t.max_p95_latency_ratio}x",
    )


def _entropy_shift(canary: VersionSignals, stable: VersionSignals, t: GateThresholds) -> GateCheck:
    name = GateCheckName.ENTROPY_SHIFT
    if canary.mean_entropy_nats is None or stable.mean_entropy_nats is None:
        return GateCheck(
            name=name, outcome=CheckOutcome.SKIPPED, detail="no entropy measured for both versions"
        )
    shift = abs(canary.mean_entropy_nats - stable.mean_entropy_nats)
    ok = shift <= t.max_entropy_shift_nats
    return GateCheck(
        name=name,
        outcome=CheckOutcome.PASS if ok else CheckOutcome.FAIL,
        observed=shift,
        threshold=t.max_entropy_shift_nats,
        detail=f"mean token entropy canary {canary.mean_entropy_nats:.3f} vs stable "
        f"{stable.mean_entropy_nats:.3f} nats (shift {shift:.3f}, limit {t.max_entropy_shift_nats})",
    )


def _drift(canary: VersionSignals, stable: VersionSignals, t: GateThresholds) -> GateCheck:
    name = GateCheckName.DRIFT_PSI
    if not canary.drift_psi:
        return GateCheck(name=name, outcome=CheckOutcome.SKIPPED, detail="no drift score for the canary")
    excess = {f: psi - stable.drift_psi.get(f, 0.0) for f, psi in canary.drift_psi.items()}
    feature, worst = max(excess.items(), key=lambda kv: kv[1])
    base = stable.drift_psi.get(feature)
    against = f"stable {base:.3f}" if base is not None else "stable not scored"
    ok = worst < t.max_drift_psi
    return GateCheck(
        name=name,
        outcome=CheckOutcome.PASS if ok else CheckOutcome.FAIL,
        observed=worst,
        threshold=t.max_drift_psi,
        detail=f"{feature} PSI canary {canary.drift_psi[feature]:.3f}, {against}: the canary's excess "
        f"{worst:.3f}, limit {t.max_drift_psi}",
    )


def _accuracy(canary: VersionSignals, stable: VersionSignals, t: GateThresholds) -> GateCheck:
    name = GateCheckName.LIVE_ACCURACY
    if canary.feedback_total < t.min_feedback or stable.feedback_total < t.min_feedback:
        return GateCheck(
            name=name,
            outcome=CheckOutcome.SKIPPED,
            detail=f"feedback canary {canary.feedback_total}, stable {stable.feedback_total} "
            f"(each needs {t.min_feedback})",
        )
    # One-sided: only a canary worse than stable fails, so the whole alpha goes to that tail.
    z, p = two_proportion_z_test(
        canary.feedback_correct,
        canary.feedback_total,
        stable.feedback_correct,
        stable.feedback_total,
        alternative="less",
    )
    worse = z < 0 and p < t.accuracy_alpha
    return GateCheck(
        name=name,
        outcome=CheckOutcome.FAIL if worse else CheckOutcome.PASS,
        observed=p,
        threshold=t.accuracy_alpha,
        detail=f"live accuracy canary {canary.feedback_correct}/{canary.feedback_total} vs stable "
        f"{stable.feedback_correct}/{stable.feedback_total}: z={z:.2f}, p={p:.4f}"
        + (" (significantly worse)" if worse else ""),
    )


def evaluate_gate(
    canary: VersionSignals, stable: VersionSignals, thresholds: GateThresholds | None = None
) -> GateDecision:
    """Decide pass / fail / inconclusive for a canary against its stable version."""
    t = thresholds or GateThresholds()
    first = _min_requests(canary, t)
    if first.outcome is not CheckOutcome.PASS:
        return GateDecision(result=GateResult.INCONCLUSIVE, reasons=[first.detail], checks=[first])
    checks = [
        first,
        _error_ratio(canary, t),
        _p95_latency(canary, stable, t),
        _entropy_shift(canary, stable, t),
        _drift(canary, stable, t),
        _accuracy(canary, stable, t),
    ]
    failed = [c.detail for c in checks if c.outcome is CheckOutcome.FAIL]
    if failed:
        return GateDecision(result=GateResult.FAIL, reasons=failed, checks=checks)
    open_ = [c.detail for c in checks if c.outcome is CheckOutcome.INCONCLUSIVE]
    if open_:
        return GateDecision(result=GateResult.INCONCLUSIVE, reasons=open_, checks=checks)
    return GateDecision(result=GateResult.PASS, reasons=[], checks=checks)
