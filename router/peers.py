"""Feedback for an answer another gateway replica gave: ask the peers that might hold it.

Each replica records the answers it served in its own feedback store. Behind a load balancer,
`POST /v1/feedback` usually reaches another replica than the one that answered; with `peers` set
(URLs, or `dns+http://SERVICE:PORT` of the gateways' headless Service), a replica that does not
know the completion id passes the same body on to each peer in turn, marked as forwarded so that
it goes one hop only, and answers with the first peer that knows the id. This replica's own
address may be among the peers; it answers 404 to the forwarded copy, like any other replica
that does not hold the id.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import httpx

from lorafleet.discovery import resolve_urls

log = logging.getLogger("lorafleet.router")

FORWARDED_HEADER = "x-lorafleet-forwarded"
PEER_TIMEOUT = httpx.Timeout(5.0)


@dataclass(frozen=True)
class PeerAnswer:
    """What the peers said: the first one that knew the id (status, body), or how many did not answer."""

    status: int | None = None
    body: bytes = b""
    asked: int = 0
    unreachable: int = 0


async def ask_peers(
    http: httpx.AsyncClient, peers: Sequence[str], body: bytes, headers: Mapping[str, str]
) -> PeerAnswer:
    """POST `body` to /v1/feedback of each peer until one does not answer 404."""
    urls = [url for target in peers for url in await resolve_urls(target)]
    forward = {"Content-Type": "application/json", FORWARDED_HEADER: "feedback"}
    if "authorization" in headers:
        forward["Authorization"] = headers["authorization"]
    unreachable = 0
    for url in urls:
        try:
            resp = await http.post(f"{url}/v1/feedback", content=body, headers=forward, timeout=PEER_TIMEOUT)
            if resp.status_code != 404:
                return PeerAnswer(resp.status_code, resp.content, len(urls), unreachable)
        except httpx.HTTPError as exc:
            unreachable += 1
            log.warning("gateway peer %s did not answer a feedback look-up: %s", url, exc)
    return PeerAnswer(asked=len(urls), unreachable=unreachable)
