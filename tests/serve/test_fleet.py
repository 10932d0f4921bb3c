"""The fleet's view of its engines as the engines named change (no engine needs to answer)."""

from __future__ import annotations

import asyncio
import socket

import httpx

from serve.fleet import Fleet


def _closed_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_an_engine_no_longer_named_is_forgotten_and_reported() -> None:
    kept, gone = _closed_url(), _closed_url()
    health: dict[str, bool] = {}
    removed: list[str] = []

    async def run() -> Fleet:
        async with httpx.AsyncClient() as http:
            fleet = Fleet([kept, gone], http, on_health=health.__setitem__, on_removed=removed.append)
            await fleet.refresh()
            assert set(fleet.engines) == {kept, gone} and health == {kept: False, gone: False}
            fleet.targets = [kept]
            await fleet.refresh()
            return fleet

    fleet = asyncio.run(run())
    assert removed == [gone]
    assert set(fleet.engines) == {kept} and [e["url"] for e in fleet.status()] == [kept]
