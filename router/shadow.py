"""Shadow traffic: a copy of a route's request sent to its shadow version, in the background.

The client's answer never waits for its shadow, nor changes with it: the copy starts once the
primary answer is complete, runs with bounded concurrency (`shadow_max_concurrency`; beyond, it is
dropped and counted), and its failures only increment a counter. Its answer is compared with the
primary's (the label each names, for a label task) and logged for feedback, which can then score
the shadow version too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson

from lorafleet.textstats import match_label, normalise_answer
from monitor.metrics import Arm
from router.answer import answer_text
from router.forward import Forwarder, Target
from router.ids import new_request_id
from router.observe import Observer
from router.requests import CHAT
from router.settings import GatewaySettings
from router.upstream import UPSTREAM_ERRORS, EngineFailure

log = logging.getLogger("lorafleet.router")


class Shadows:
    """The shadow copies in flight."""

    def __init__(self, settings: GatewaySettings, forwarder: Forwarder, observer: Observer) -> None:
        self.settings = settings
        self.forwarder = forwarder
        self.observer = observer
        self.slots = asyncio.Semaphore(settings.shadow_max_concurrency)
        self._background: set[asyncio.Task[None]] = set()

    def mirror(
        self, endpoint: str, body: dict[str, Any], target: Target, primary_answer: str, primary_id: str | None
    ) -> None:
        """Send a copy of the request to the route's shadow version, never awaited. `primary_id`:
        the client's completion id, which feedback will name (and so score the shadow's answer)."""
        if target.shadow is None or target.shadow == target.version:
            return
        if self.slots.locked():
            self.observer.record_shadow(target.route, target.shadow, "dropped", None)
            return
        task = asyncio.get_running_loop().create_task(
            self._run(endpoint, body, target, primary_answer, primary_id)
        )
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _run(
        self, endpoint: str, body: dict[str, Any], target: Target, primary_answer: str, primary_id: str | None
    ) -> None:
        assert target.shadow is not None
        shadow = target.shadow
        async with self.slots:
            deadline = time.monotonic() + self.settings.timeouts.request_s
            try:
                attempt = await self.forwarder.send(
                    endpoint, body, shadow, Arm.SHADOW, new_request_id("shadow"), deadline
                )
            except EngineFailure as exc:
                log.info("shadow request to %s failed: %s", shadow, exc)
                self.observer.record_shadow(target.route, shadow, "error", None)
                return
            try:
                raw = await attempt.response.read()
            except UPSTREAM_ERRORS as exc:
                log.info("shadow answer of %s broke: %s", shadow, exc)
                self.observer.record_shadow(target.route, shadow, "error", None)
                return
            finally:
                attempt.finish()
        if attempt.response.status != 200:
            self.observer.record_shadow(target.route, shadow, "error", None)
            return
        try:
            data = orjson.loads(raw)
        except ValueError:
            self.observer.record_shadow(target.route, shadow, "error", None)
            return
        answer = answer_text(data, endpoint == CHAT) or ""
        labels = self.observer.label_set(shadow)
        if labels:
            agreed = match_label(answer, labels) == match_label(primary_answer, labels)
        else:
            agreed = normalise_answer(answer) == normalise_answer(primary_answer)
        self.observer.record_shadow(target.route, shadow, "ok", agreed)
        if self.observer.feedback_store is not None and data.get("id"):
            self.observer.feedback_store.record_answer(
                data["id"],
                target.route,
                shadow,
                answer,
                match_label(answer, labels) if labels else None,
                primary_id=primary_id,
            )

    async def drain(self) -> None:
        """Wait for the shadow copies in flight (on shutdown)."""
        if self._background:
            await asyncio.wait(self._background, timeout=5)
