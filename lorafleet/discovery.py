"""URLs of a set of servers: plain URLs, or `dns+http://SERVICE:PORT` for every address behind a name.

A Kubernetes headless Service resolves to the address of each ready pod, so the engines behind
`dns+http://lorafleet-engine-headless:8000` (or the gateway replicas behind their own headless
Service) are found without listing them. Resolved again on each call: pods come and go.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from urllib.parse import urlsplit

log = logging.getLogger("lorafleet")

DNS_SCHEME = "dns+"


async def resolve_urls(target: str) -> list[str]:
    """`target` itself (a plain URL, without a trailing slash), or one URL per address of its DNS name."""
    if not target.startswith(DNS_SCHEME):
        return [target.rstrip("/")]
    url = urlsplit(target[len(DNS_SCHEME) :])
    host, port = url.hostname or "", url.port or 80
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        log.warning("cannot resolve %s: %s", host, exc)
        return []
    addrs = sorted({str(info[4][0]) for info in infos})
    return [f"{url.scheme}://{f'[{a}]' if ':' in a else a}:{port}" for a in addrs]
