"""router: the OpenAI-compatible gateway that serves several adapter versions in parallel.

The gateway imports neither torch nor vllm.

    settings     GatewaySettings (LORAFLEET_ROUTER_*)
    app          create_app(settings, ...): the ASGI app and its lifespan
    policy       RoutesFile, Route, Canary, Shadow, the steps SetWeight / Pause / Analysis
    selector     choose / mirror: pure request -> version
    gateway      Gateway: resolve, forward with fallback, stream, shadow
    answer       read_answer / without_logprobs: an engine's answer, decoded once and typed
    rollout      Rollouts (promote, rollback, ...), Controller (canary steps), gate sources
    store        RouteStore, FileStore (k8s_store: ConfigMapStore)
    admin, openai_api, auth, upstream, responses, observe: the HTTP surfaces and glue
    errors       RouterError and its subclasses (each with its HTTP status)
"""

from router.app import create_app
from router.errors import RouterError
from router.policy import Analysis, Canary, Pause, Route, RoutesFile, SetWeight, Shadow
from router.rollout import Controller, Rollouts
from router.selector import choose, mirror
from router.settings import GatewaySettings
from router.store import FileStore, RouteStore

__all__ = [
    "Analysis",
    "Canary",
    "Controller",
    "FileStore",
    "GatewaySettings",
    "Pause",
    "Rollouts",
    "Route",
    "RouteStore",
    "RouterError",
    "RoutesFile",
    "SetWeight",
    "Shadow",
    "choose",
    "create_app",
    "mirror",
]
