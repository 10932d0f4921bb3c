"""Monitoring of adapter versions in production: metrics, entropy, drift, feedback, the canary gate.

What other packages may import; everything else is internal. The `monitor` package imports neither
torch, vLLM nor transformers: it runs inside the gateway.

    metrics     build_metrics, Metrics, declared_names, the label enums
    entropy     EntropyAccumulator, EntropySampler (router/answer.py reads logprobs from answers)
    drift       psi, js_distance, DriftWindow, DriftScore, DriftLevel
    accuracy    wilson_interval, two_proportion_z_test, RollingAccuracy, publish_live_accuracy,
                restore_live_accuracy
    feedback    FeedbackStore (SQLite or PostgreSQL: open_store), AnswerRecord, FeedbackRecord,
                FeedbackOutcome, LabelledAnswer
    gate        VersionSignals, GateThresholds, evaluate_gate, GateDecision, GateCheck
    signals     LocalSignals, Snapshot, PrometheusSignals, histogram_quantile
    alerts      AlertThresholds, rule_groups            (python -m monitor.alerts)
    dashboards  dashboards.build.dashboard              (python -m monitor.dashboards.build)
    errors      MonitorError and its subclasses
"""

from monitor.accuracy import (
    RollingAccuracy,
    publish_live_accuracy,
    restore_live_accuracy,
    two_proportion_z_test,
    wilson_interval,
)
from monitor.alerts import AlertThresholds, rule_groups
from monitor.drift import DriftLevel, DriftScore, DriftWindow, js_distance, psi
from monitor.entropy import EntropyAccumulator, EntropySampler
from monitor.errors import (
    FeedbackConflictError,
    FeedbackError,
    InvalidFeedbackError,
    MonitorError,
    SignalsUnavailableError,
    StoreError,
    StoreSchemaError,
    StoreUnavailableError,
    UnknownCompletionError,
)
from monitor.feedback import (
    AnswerRecord,
    FeedbackOutcome,
    FeedbackRecord,
    FeedbackStore,
    LabelledAnswer,
    open_store,
)
from monitor.gate import (
    CheckOutcome,
    GateCheck,
    GateCheckName,
    GateDecision,
    GateThresholds,
    VersionSignals,
    evaluate_gate,
)
from monitor.metrics import (
    OTHER,
    Arm,
    Direction,
    DriftFeature,
    ErrorReason,
    GateResult,
    Metrics,
    VersionState,
    build_metrics,
    declared_names,
)
from monitor.signals import LocalSignals, PrometheusSignals, Snapshot, histogram_quantile

__all__ = [
    "OTHER",
    "AlertThresholds",
    "AnswerRecord",
    "Arm",
    "CheckOutcome",
    "Direction",
    "DriftFeature",
    "DriftLevel",
    "DriftScore",
    "DriftWindow",
    "EntropyAccumulator",
    "EntropySampler",
    "ErrorReason",
    "FeedbackConflictError",
    "FeedbackError",
    "FeedbackOutcome",
    "FeedbackRecord",
    "FeedbackStore",
    "GateCheck",
    "GateCheckName",
    "GateDecision",
    "GateResult",
    "GateThresholds",
    "InvalidFeedbackError",
    "LabelledAnswer",
    "LocalSignals",
    "Metrics",
    "MonitorError",
    "PrometheusSignals",
    "RollingAccuracy",
    "SignalsUnavailableError",
    "Snapshot",
    "StoreError",
    "StoreSchemaError",
    "StoreUnavailableError",
    "UnknownCompletionError",
    "VersionSignals",
    "VersionState",
    "build_metrics",
    "declared_names",
    "evaluate_gate",
    "histogram_quantile",
    "js_distance",
    "open_store",
    "psi",
    "publish_live_accuracy",
    "restore_live_accuracy",
    "rule_groups",
    "two_proportion_z_test",
    "wilson_interval",
]
