"""serve: vLLM engines with LoRA enabled, and the adapters each one holds.

vLLM runs in its own process; nothing here imports it (or torch), so the gateway can use the fleet.

    settings   EngineSettings (LORAFLEET_ENGINE_*)
    engine     Engine (one vLLM process), Supervisor (restart with backoff, adapters restored)
    adapters   AdapterClient: load/unload over vLLM's runtime LoRA API, idempotent
    fleet      Fleet: several engines, health, reconcile to the versions the routes need, pick
    errors     ServeError and its subclasses
"""

from serve.adapters import AdapterClient
from serve.engine import Engine, Supervisor, build_command
from serve.errors import AdapterLoadError, EngineStartError, EngineUnavailableError, ServeError
from serve.fleet import EngineState, Fleet, ReconcileReport
from serve.settings import Device, EngineSettings

__all__ = [
    "AdapterClient",
    "AdapterLoadError",
    "Device",
    "Engine",
    "EngineSettings",
    "EngineStartError",
    "EngineState",
    "EngineUnavailableError",
    "Fleet",
    "ReconcileReport",
    "ServeError",
    "Supervisor",
    "build_command",
]
