"""What the gateway tells the monitor about each request: metrics, drift, the answer log, feedback.

The router calls the monitor, never the reverse. `Observer.record` runs on the request path after
the answer is known, so it stays cheap: counters, the request's drift bins added to this process's
counts (O(words)), and one queued row for the answer log (written by the feedback store's own
thread).

Numbers pooled over the fleet. Each process keeps a drift window per version (its last
`drift_window` requests, counted over the version's drift bins); `publish()` (on a timer) writes it
to the feedback store, and every `drift_refresh_s` scores the sum of the windows of every process
and replica sharing that store (those updated in the last `drift_stale_s`). The drift gauges every
replica exports are those pooled scores, so alerts, dashboards and the canary gate read the
fleet's drift. `refresh_all_accuracy()` does the same for live accuracy, which a shared store
already pools. Without a store, the windows of this process alone are scored (MemoryDriftCounts).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, KeysView, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from lorafleet.errors import LorafleetError
from lorafleet.registry import ReferenceStats, Registry
from lorafleet.textstats import match_label
from monitor.accuracy import publish_live_accuracy, restore_live_accuracy
from monitor.drift import REQUESTS_BIN, DriftBins, DriftScore, DriftWindow, publish_scores
from monitor.feedback import FeedbackRecord, FeedbackStore
from monitor.metrics import OTHER, Arm, Direction, DriftFeature, ErrorReason, Metrics

log = logging.getLogger("lorafleet.router")
_FEATURES = {f.value for f in DriftFeature}


class DriftCounts(Protocol):
    """Where drift windows are pooled: the feedback store (every replica), or this process."""

    def record_drift_window(
        self, replica: str, route: str, version: str, counts: Mapping[tuple[str, int], int], at: float
    ) -> None: ...
    def pooled_drift(self, route: str, version: str, since: float) -> dict[tuple[str, int], int]: ...


class MemoryDriftCounts:
    """The drift windows of this process only, for a gateway without a feedback store."""

    def __init__(self) -> None:
        self._windows: dict[tuple[str, str], dict[tuple[str, int], int]] = {}

    def record_drift_window(
        self, replica: str, route: str, version: str, counts: Mapping[tuple[str, int], int], at: float
    ) -> None:
        self._windows[(route, version)] = dict(counts)

    def pooled_drift(self, route: str, version: str, since: float) -> dict[tuple[str, int], int]:
        return dict(self._windows.get((route, version), {}))


@dataclass
class Outcome:
    """One answered request, as the monitor sees it."""

    route: str
    version: str
    arm: Arm
    status: int
    duration_s: float
    input_text: str = ""
    system: str | None = None
    answer: str | None = None
    completion_id: str | None = None
    ttft_s: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    entropy: float | None = None
    error: ErrorReason | None = None


class Observer:
    """Per (route, version) signals, bounded to the versions the routes file names."""

    def __init__(
        self,
        metrics: Metrics,
        registry: Registry,
        feedback: FeedbackStore | None,
        drift_window: int = 500,
        drift_min_samples: int = 200,
        accuracy_window: int = 500,
        drift_refresh_s: float = 5.0,
        drift_stale_s: float = 600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.metrics = metrics
        self.registry = registry
        self.feedback_store = feedback
        self.drift_window = drift_window
        self.drift_min_samples = min(drift_min_samples, drift_window)
        self.drift_refresh_s = drift_refresh_s
        self.drift_stale_s = drift_stale_s
        self.accuracy_window = accuracy_window
        self.clock = clock
        self.replica = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        self._counts: DriftCounts = feedback if feedback is not None else MemoryDriftCounts()
        self._states: dict[tuple[str, str], str] = {}  # the live (route, version) pairs -> state
        self._references: dict[str, ReferenceStats | None] = {}
        self._windows: dict[tuple[str, str], DriftWindow | None] = {}
        self._changed: set[tuple[str, str]] = set()  # windows observed since they were last written
        self._drift_scores: dict[tuple[str, str], tuple[dict[DriftFeature, DriftScore], int]] = {}
        self._refreshed_at = 0.0
        self._answers: dict[tuple[str, str], list[int]] = {}  # (answers, answers naming no label)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def set_known(self, live: dict[tuple[str, str], str]) -> None:
        """The live (route, version) pairs -> state; anything else is exported as 'other'.

        Each new pair's series are created at zero now, before its first request: Prometheus'
        increase() cannot see the first increment of a series it never saw at zero, so a canary
        whose first requests all fall between two scrapes would otherwise count as idle.
        """
        new = [key for key in live if key not in self._states]
        for route, version in new:
            self._prime(route, version, live[(route, version)])
        for route, version in self._states.keys() - live.keys():
            self._forget(route, version)
        self._publish_states(live)
        if self.feedback_store is not None:
            # At start-up the gauges are empty but the verdicts are on disk.
            restore_live_accuracy(self.feedback_store, self.metrics, new, self.accuracy_window)

    @property
    def known(self) -> KeysView[tuple[str, str]]:
        """The live (route, version) pairs: the only label values exported as themselves."""
        return self._states.keys()

    def _publish_states(self, live: dict[tuple[str, str], str]) -> None:
        """`lorafleet_version_info{route, version, state}` = 1 for each live pair, and only its current state."""
        info = self.metrics.version_info
        for key, state in self._states.items():
            if live.get(key) != state:
                # 0 first: with several workers a removed series keeps its last value on disk.
                info.labels(*key, state).set(0)
                info.remove_by_labels({"route": key[0], "version": key[1], "state": state})
        for (route, version), state in live.items():
            info.labels(route, version, state).set(1)
        self._states = dict(live)

    def _forget(self, route: str, version: str) -> None:
        """Drop the gauges of a version that is no longer live, so that its alerts stop firing."""
        m = self.metrics
        labels = {"route": route, "version": version}
        for gauge in (
            m.drift_psi,
            m.drift_js,
            m.drift_window,
            m.live_accuracy,
            m.live_accuracy_lower,
            m.live_accuracy_upper,
        ):
            gauge.remove_by_labels(labels)
        self._windows.pop((route, version), None)
        self._changed.discard((route, version))
        self._drift_scores.pop((route, version), None)
        self._answers.pop((route, version), None)

    def _prime(self, route: str, version: str, state: str) -> None:
        m = self.metrics
        arms = {Arm.PINNED.value, state if state in {a.value for a in Arm} else Arm.STABLE.value}
        for arm in arms:
            for code_class in ("2xx", "4xx", "5xx"):
                self._child(m.requests, route, version, arm, code_class)
        for reason in ErrorReason:
            self._child(m.errors, route, version, reason.value)
        self._child(m.request_duration, route, version)
        self._child(m.entropy, route, version)
        for outcome in ("correct", "incorrect"):
            self._child(m.feedback, route, version, outcome)

    def label_values(self, route: str, version: str) -> tuple[str, str]:
        if (route, version) in self.known:
            return route, version
        return (route if any(r == route for r, _ in self.known) else OTHER), OTHER

    def reference(self, version: str) -> ReferenceStats | None:
        if version not in self._references:
            try:
                self._references[version] = self.registry.get(version).reference()
            except (LorafleetError, OSError, ValueError) as exc:
                log.warning("no reference statistics for %s: %s", version, exc)
                self._references[version] = None
        return self._references[version]

    def label_set(self, version: str) -> list[str] | None:
        """The labels of a classification version (from its reference statistics); do not modify."""
        ref = self.reference(version)
        return ref.labels.labels if ref and ref.labels else None

    def _window(self, route: str, version: str) -> DriftWindow | None:
        key = (route, version)
        if key not in self._windows:
            ref = self.reference(version)
            self._windows[key] = (
                None
                if ref is None
                else DriftWindow(ref, self.drift_window, min_samples=self.drift_min_samples)
            )
        return self._windows[key]

    def _child(self, metric: Any, *labels: str) -> Any:
        """metric.labels(*labels), cached: label lookups are a large part of the per-request cost."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def record(self, o: Outcome) -> None:
        m = self.metrics
        inc, observe = m.pending.inc, m.pending.observe
        route, version = self.label_values(o.route, o.version)
        inc(self._child(m.requests, route, version, o.arm.value, f"{o.status // 100}xx"))
        observe(self._child(m.request_duration, route, version), o.duration_s)
        if o.error is not None:
            inc(self._child(m.errors, route, version, o.error.value))
        if o.ttft_s is not None:
            observe(self._child(m.time_to_first_token, route, version), o.ttft_s)
            if o.completion_tokens and o.completion_tokens > 1:
                tpot = (o.duration_s - o.ttft_s) / (o.completion_tokens - 1)
                observe(self._child(m.time_per_output_token, route, version), max(tpot, 0.0))
        if o.prompt_tokens:
            inc(self._child(m.tokens, route, version, Direction.INPUT.value), o.prompt_tokens)
        if o.completion_tokens:
            inc(self._child(m.tokens, route, version, Direction.OUTPUT.value), o.completion_tokens)
        if o.answer is None or o.status != 200 or version == OTHER:
            return
        if o.entropy is not None:
            observe(self._child(m.entropy, route, version), o.entropy)
        labels = self.label_set(version)
        predicted = match_label(o.answer, labels) if labels else None
        if labels is not None:
            inc(self._child(m.predictions, route, version, predicted or OTHER))
            answered = self._answers.setdefault((route, version), [0, 0])
            answered[0] += 1
            answered[1] += predicted is None
        window = self._window(route, version)
        if window is not None:
            window.observe(o.input_text, predicted, o.entropy)
            self._changed.add((route, version))
        if self.feedback_store is not None and o.completion_id:
            self.feedback_store.record_answer(
                o.completion_id, route, version, o.answer, predicted, input_text=o.input_text, system=o.system
            )

    def other_label_ratio(self, route: str, version: str) -> float | None:
        """Share of this process's answers of a classification version that named no known label."""
        answers, other = self._answers.get((route, version), (0, 0))
        return other / answers if answers else None

    def record_shadow(self, route: str, version: str, outcome: str, agreed: bool | None) -> None:
        route, version = self.label_values(route, version)
        self.metrics.shadow_requests.labels(route, version, outcome).inc()
        if agreed is not None:
            self.metrics.shadow_comparisons.labels(route, version, "agree" if agreed else "disagree").inc()

    async def publish(self) -> None:
        """Hand this process's changed drift windows to the store; every `drift_refresh_s`, score
        the fleet's pooled windows and set the drift gauges (the store is read in a thread)."""
        now = self.clock()
        changed, self._changed = self._changed, set()
        for route, version in changed:
            window = self._windows.get((route, version))
            if window is not None:
                counts = {(f.value, b): n for (f, b), n in window.counts().items()}
                self._counts.record_drift_window(self.replica, route, version, counts, now)
        if now - self._refreshed_at < self.drift_refresh_s:
            return
        self._refreshed_at = now
        live = [(key, w.bins) for key, w in self._windows.items() if w is not None and key in self.known]
        scored = await asyncio.to_thread(self._pooled, live, now - self.drift_stale_s)
        for (route, version), (scores, requests) in scored.items():
            if (route, version) in self.known:  # still live after the wait
                self._drift_scores[(route, version)] = (scores, requests)
                publish_scores(self.metrics, route, version, scores, requests)

    def _pooled(
        self, live: list[tuple[tuple[str, str], DriftBins]], since: float
    ) -> dict[tuple[str, str], tuple[dict[DriftFeature, DriftScore], int]]:
        out = {}
        for (route, version), bins in live:
            raw = self._counts.pooled_drift(route, version, since)
            counts = {(DriftFeature(f), b): n for (f, b), n in raw.items() if f in _FEATURES}
            requests = counts.get((DriftFeature.INPUT_LENGTH, REQUESTS_BIN), 0)
            out[(route, version)] = (bins.score(counts, self.drift_min_samples), requests)
        return out

    def drift(self) -> dict[tuple[str, str], dict[str, Any]]:
        """The fleet's drift of each live version, as last scored: requests pooled, and each feature."""
        out: dict[tuple[str, str], dict[str, Any]] = {}
        for key, (scores, requests) in self._drift_scores.items():
            out[key] = {
                "window": requests,
                "features": {
                    f.value: {"psi": s.psi, "js_distance": s.js_distance, "n": s.n, "level": s.level.value}
                    for f, s in scores.items()
                },
            }
        return out

    async def refresh_all_accuracy(self) -> None:
        """Every live version's live accuracy gauges from the store: with a shared store, the
        verdicts any replica received."""
        for route, version in list(self.known):
            await self.refresh_accuracy(route, version)

    async def add_feedback(
        self, completion_id: str, label: str | None, correct: bool | None, source: str | None
    ) -> tuple[FeedbackRecord, bool]:
        """Store a verdict; return it and whether it is new (a repeat returns the stored one)."""
        store = self.feedback_store
        if store is None:
            raise LorafleetError("feedback is disabled on this gateway (no state folder)")
        record, created = await asyncio.to_thread(
            store.add_feedback, completion_id, label=label, correct=correct, source=source
        )
        await self.refresh_accuracy(record.route, record.version, new=record if created else None)
        return record, created

    async def refresh_accuracy(
        self, route: str, version: str, new: FeedbackRecord | None = None
    ) -> tuple[int, int]:
        store = self.feedback_store
        if store is None:
            return (0, 0)
        correct, total = await asyncio.to_thread(store.rolling, route, version, self.accuracy_window)
        route_l, version_l = self.label_values(route, version)
        if new is not None:
            self.metrics.feedback.labels(route_l, version_l, "correct" if new.correct else "incorrect").inc()
        publish_live_accuracy(self.metrics, route_l, version_l, correct, total)
        return correct, total
