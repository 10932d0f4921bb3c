"""router: the OpenAI-compatible gateway that serves several adapter versions in parallel.

The gateway imports neither torch nor vllm.

    settings     GatewaySettings (LORAFLEET_ROUTER_*)
    app          create_app(settings, ...): the ASGI app and its lifespan
    policy       RoutesFile, Route, Canary, Shadow, the steps SetWeight / Pause / Analysis
    selector     choose / mirror: pure request -> version
    gateway      Gateway: routing state, resolve, and the answering of one request
    requests     decode_request: a completion request decoded once, typed and checked
    forward      Forwarder: one engine, the others, the fallback, within the request's deadline
    relay        the stream relay; shadow: Shadows, the background copies to a shadow version
    answer       reading and rewriting the engines' OpenAI-shaped answers (logprobs included)
    upstream     Transport (the request path's seam; http1: Http1Pool), EngineFailure
    rollout      Rollouts: the operators' changes (promote, rollback, ...)
    controller   Controller: canary steps from the gate's signals; gate sources; LeaderLock
    store        RouteStore, FileStore (k8s_store: ConfigMapStore)
    admin, openai_api, auth, responses, observe, peers, ids: the HTTP surfaces and glue
    errors       RouterError and its subclasses (each with its HTTP status)
"""

from router.app import create_app
from router.controller import Controller
from router.errors import RouterError
from router.policy import Analysis, Canary, Pause, Route, RoutesFile, SetWeight, Shadow
from router.rollout import Rollouts
from router.selector import choose, mirror
from router.settings import GatewaySettings
from router.store import FileStore, RouteStore
from router.upstream import Transport

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
    "Transport",
    "choose",
    "create_app",
    "mirror",
]
