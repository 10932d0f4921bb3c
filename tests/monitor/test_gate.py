"""The canary gate: pass, fail and inconclusive, check by check."""

import pytest
from pydantic import ValidationError

from monitor.gate import (
    CheckOutcome,
    GateCheckName,
    GateDecision,
    GateThresholds,
    VersionSignals,
    evaluate_gate,
)
from monitor.metrics import DriftFeature, GateResult

STABLE = VersionSignals(
    requests=900,
    errors=9,
    p95_latency_s=0.40,
    mean_entropy_nats=0.10,
    drift_psi={DriftFeature.INPUT_LENGTH: 0.03, DriftFeature.PREDICTED_LABEL: 0.02},
    feedback_correct=45,
    feedback_total=50,
)
CANARY = VersionSignals(
    requests=100,
    errors=2,
    p95_latency_s=0.45,
    mean_entropy_nats=0.15,
    drift_psi={DriftFeature.INPUT_LENGTH: 0.05, DriftFeature.PREDICTED_LABEL: 0.04},
    feedback_correct=44,
    feedback_total=50,
)


def canary(**changes: object) -> VersionSignals:
    return CANARY.model_copy(update=changes)


def test_a_healthy_canary_passes() -> None:
    decision = evaluate_gate(CANARY, STABLE, GateThresholds())
    assert decision.result is GateResult.PASS
    assert decision.reasons == []
    assert [c.name for c in decision.checks] == list(GateCheckName)
    assert all(c.outcome is CheckOutcome.PASS for c in decision.checks)
    latency = decision.check(GateCheckName.P95_LATENCY)
    assert latency.observed == pytest.approx(0.45 / 0.40)
    assert latency.threshold == 1.5


def test_too_little_canary_traffic_is_inconclusive() -> None:
    decision = evaluate_gate(canary(requests=10, errors=5), STABLE)
    assert decision.result is GateResult.INCONCLUSIVE
    assert "10 requests" in decision.reasons[0]
    assert decision.checks[0].outcome is CheckOutcome.INCONCLUSIVE


@pytest.mark.parametrize(
    ("changes", "check", "observed"),
    [
        ({"errors": 6}, GateCheckName.ERROR_RATIO, 0.06),
        ({"p95_latency_s": 0.8}, GateCheckName.P95_LATENCY, 2.0),
        ({"mean_entropy_nats": 0.5}, GateCheckName.ENTROPY_SHIFT, 0.4),
        ({"drift_psi": {DriftFeature.PREDICTED_LABEL: 0.27}}, GateCheckName.DRIFT_PSI, 0.25),
    ],
)
def test_each_limit_fails_the_canary(
    changes: dict[str, object], check: GateCheckName, observed: float
) -> None:
    decision = evaluate_gate(canary(**changes), STABLE)
    assert decision.result is GateResult.FAIL
    failed = [c for c in decision.checks if c.outcome is CheckOutcome.FAIL]
    assert [c.name for c in failed] == [check]
    assert failed[0].observed == pytest.approx(observed)
    assert decision.reasons == [failed[0].detail]


def test_drift_every_version_sees_does_not_fail_the_canary() -> None:
    # All traffic shifted: both versions' inputs and labels moved far from their references.
    shifted = {
        DriftFeature.INPUT_LENGTH: 0.9,
        DriftFeature.INPUT_VOCABULARY: 1.4,
        DriftFeature.PREDICTED_LABEL: 0.6,
    }
    stable = STABLE.model_copy(update={"drift_psi": shifted})
    both = canary(
        drift_psi={
            DriftFeature.INPUT_LENGTH: 1.0,
            DriftFeature.INPUT_VOCABULARY: 1.3,
            DriftFeature.PREDICTED_LABEL: 0.7,
        }
    )
    decision = evaluate_gate(both, stable)
    assert decision.result is GateResult.PASS
    check = decision.check(GateCheckName.DRIFT_PSI)
    assert check.observed == pytest.approx(0.1)  # the canary's largest excess: 1.0 - 0.9 (or 0.7 - 0.6)
    # The same canary numbers against a stable version that did not drift: the canary is to blame.
    alone = evaluate_gate(both, STABLE).check(GateCheckName.DRIFT_PSI)
    assert alone.outcome is CheckOutcome.FAIL
    assert alone.observed == pytest.approx(1.3)  # input_vocabulary: stable has no score, judged alone
    assert "input_vocabulary PSI canary 1.300, stable not scored" in alone.detail


def test_drift_fails_on_the_canary_s_excess_over_stable() -> None:
    stable = STABLE.model_copy(update={"drift_psi": {DriftFeature.INPUT_LENGTH: 0.4}})
    decision = evaluate_gate(canary(drift_psi={DriftFeature.INPUT_LENGTH: 0.65}), stable)
    assert decision.result is GateResult.FAIL
    check = decision.check(GateCheckName.DRIFT_PSI)
    assert check.observed == pytest.approx(0.25)
    assert "input_length PSI canary 0.650, stable 0.400" in check.detail
    assert (
        evaluate_gate(canary(drift_psi={DriftFeature.INPUT_LENGTH: 0.59}), stable).result is GateResult.PASS
    )


def test_error_ratio_at_the_limit_passes() -> None:
    assert evaluate_gate(canary(errors=5), STABLE).result is GateResult.PASS


def test_a_significantly_worse_live_accuracy_fails() -> None:
    # 35/50 against 45/50: z = -2.5, one-sided p = P(Z <= -2.5) = 0.0062 < 0.05.
    decision = evaluate_gate(canary(feedback_correct=35), STABLE)
    assert decision.result is GateResult.FAIL
    check = decision.check(GateCheckName.LIVE_ACCURACY)
    assert check.outcome is CheckOutcome.FAIL
    assert check.observed == pytest.approx(0.006210, abs=1e-6)
    assert "significantly worse" in check.detail


def test_the_accuracy_test_is_one_sided_at_the_full_alpha() -> None:
    # 38/50 against 45/50: z = -1.8635, one-sided p = 0.0312 < 0.05 fails the canary; a two-sided
    # test (p = 0.0624) would have let it through, at an effective level of alpha / 2.
    check = evaluate_gate(canary(feedback_correct=38), STABLE).check(GateCheckName.LIVE_ACCURACY)
    assert check.outcome is CheckOutcome.FAIL
    assert check.observed == pytest.approx(0.031194, abs=1e-6)
    # 39/50: pooled 0.84, se 0.073321, z = -1.6366, p = 0.0509: not significant at 0.05.
    check = evaluate_gate(canary(feedback_correct=39), STABLE).check(GateCheckName.LIVE_ACCURACY)
    assert check.outcome is CheckOutcome.PASS
    assert check.observed == pytest.approx(0.050853, abs=1e-6)


def test_live_accuracy_only_fails_when_worse_and_significant() -> None:
    better = STABLE.model_copy(update={"feedback_correct": 35})
    check = evaluate_gate(CANARY, better).check(GateCheckName.LIVE_ACCURACY)
    assert check.outcome is CheckOutcome.PASS
    assert check.observed == pytest.approx(0.986435, abs=1e-6)  # 44/50 vs 35/50: z = +2.21
    slightly_worse = canary(feedback_correct=42)  # 42/50 vs 45/50: z = -0.892, p = 0.186
    assert evaluate_gate(slightly_worse, STABLE).result is GateResult.PASS
    # The same shortfall fails at a looser alpha.
    assert evaluate_gate(slightly_worse, STABLE, GateThresholds(accuracy_alpha=0.2)).result is GateResult.FAIL


def test_live_accuracy_needs_enough_feedback_on_both_sides() -> None:
    decision = evaluate_gate(canary(feedback_correct=5, feedback_total=29), STABLE)
    assert decision.result is GateResult.PASS
    assert decision.check(GateCheckName.LIVE_ACCURACY).outcome is CheckOutcome.SKIPPED


def test_signals_a_route_does_not_produce_are_skipped() -> None:
    bare = VersionSignals(requests=100, errors=0, p95_latency_s=0.5)
    decision = evaluate_gate(bare, VersionSignals(requests=500, p95_latency_s=0.5))
    assert decision.result is GateResult.PASS
    skipped = {c.name for c in decision.checks if c.outcome is CheckOutcome.SKIPPED}
    assert skipped == {GateCheckName.ENTROPY_SHIFT, GateCheckName.DRIFT_PSI, GateCheckName.LIVE_ACCURACY}


def test_a_stable_version_without_traffic_leaves_latency_open() -> None:
    decision = evaluate_gate(CANARY, STABLE.model_copy(update={"requests": 3}))
    assert decision.result is GateResult.INCONCLUSIVE
    assert decision.check(GateCheckName.P95_LATENCY).outcome is CheckOutcome.INCONCLUSIVE
    # A failure elsewhere still fails: failed wins over inconclusive.
    worse = evaluate_gate(canary(errors=50), STABLE.model_copy(update={"requests": 3}))
    assert worse.result is GateResult.FAIL


def test_decisions_round_trip_as_json() -> None:
    decision = evaluate_gate(canary(errors=6, feedback_correct=35), STABLE)
    again = GateDecision.model_validate_json(decision.model_dump_json())
    assert again == decision
    assert len(again.reasons) == 2


def test_thresholds_are_validated() -> None:
    with pytest.raises(ValidationError, match="max_error_ratio"):
        GateThresholds(max_error_ratio=1.5)
    with pytest.raises(ValidationError, match="requests"):
        VersionSignals(requests=-1)
