"""Errors of the serving layer.

ServeError(LorafleetError)
 +-- EngineStartError          the vLLM process exited or never became healthy
 +-- EngineUnavailableError    an engine refused the connection, timed out or is not healthy
 +-- AdapterLoadError          an engine refused to load an adapter version (missing files, rank too large, corrupt)
"""

from __future__ import annotations

from lorafleet.errors import LorafleetError


class ServeError(LorafleetError):
    pass


class EngineStartError(ServeError):
    pass


class EngineUnavailableError(ServeError):
    def __init__(self, engine: str, reason: str) -> None:
        super().__init__(f"engine {engine} is unavailable: {reason}")
        self.engine = engine
        self.reason = reason


class AdapterLoadError(ServeError):
    def __init__(self, version: str, engine: str, reason: str) -> None:
        super().__init__(f"engine {engine} could not load adapter {version}: {reason}")
        self.version = version
        self.engine = engine
        self.reason = reason
