"""OpenAI-compatible endpoints as baselines: a hosted model (GPT-4o-mini, ...) or a local vLLM.

    Endpoint.parse("mini=https://api.openai.com/v1,model=gpt-4o-mini,key-env=OPENAI_API_KEY")
    ask(endpoint, prompts, max_tokens) -> EndpointAnswers   answers, usage, cost, retries

Calls run with bounded concurrency (`concurrency`). A 429, a 5xx, a timeout or a dropped
connection is retried with exponential backoff and jitter, up to `retries` times, waiting at
least what a `Retry-After` header asks (seconds or an HTTP date). A 400 that names `max_tokens`
(models that only take `max_completion_tokens`) switches the endpoint to `max_completion_tokens`
for every later call. Any other error stops the evaluation with a message naming the endpoint,
the status and the endpoint's own words. The cost is counted from the usage each answer reports,
at the prices given in the spec (USD per million tokens).
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel, Field

from training.errors import TrainingError

RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
_KEYS = {"model", "key-env", "price-in", "price-out", "timeout"}


@dataclass(frozen=True)
class Endpoint:
    """An OpenAI-compatible chat endpoint to use as one more baseline."""

    name: str
    url: str
    model: str
    api_key: str | None = None
    price_in_per_1m: float = 0.0
    price_out_per_1m: float = 0.0
    timeout_s: float = 60.0

    @classmethod
    def parse(cls, spec: str) -> Endpoint:
        """NAME=URL[,model=MODEL,key-env=VAR,price-in=USD,price-out=USD,timeout=SECONDS] (prices per
        1M tokens; timeout: of one call, 60 s by default)."""
        name, sep, rest = spec.partition("=")
        if not sep or not name or not rest:
            raise TrainingError(
                f"--endpoint {spec!r}: expected NAME=URL[,model=...,key-env=VAR]",
                hint="for example --endpoint mini=https://api.openai.com/v1,model=gpt-4o-mini,key-env=OPENAI_API_KEY",
            )
        url, *options = rest.split(",")
        if not url.startswith(("http://", "https://")):
            raise TrainingError(f"--endpoint {name}: {url!r} is not an http(s) URL")
        fields: dict[str, str] = {}
        for option in options:
            key, sep, value = option.partition("=")
            if not sep or key not in _KEYS:
                raise TrainingError(
                    f"--endpoint {name}: unknown option {option!r}; the options are {', '.join(sorted(_KEYS))}"
                )
            fields[key] = value
        api_key: str | None = None
        if "key-env" in fields:
            api_key = os.environ.get(fields["key-env"])
            if api_key is None:
                raise TrainingError(
                    f"--endpoint {name}: the environment variable {fields['key-env']} is not set"
                )
        try:
            numbers = [
                float(fields.get(k, d)) for k, d in (("price-in", 0), ("price-out", 0), ("timeout", 60))
            ]
        except ValueError:
            raise TrainingError(
                f"--endpoint {name}: price-in and price-out are USD per 1M tokens, timeout seconds"
            ) from None
        if numbers[2] <= 0 or numbers[0] < 0 or numbers[1] < 0:
            raise TrainingError(f"--endpoint {name}: prices must be 0 or more and the timeout positive")
        return cls(name, url, fields.get("model", name), api_key, numbers[0], numbers[1], numbers[2])

    def chat_url(self) -> str:
        url = self.url.rstrip("/")
        if url.endswith("/chat/completions"):
            return url
        return url + ("/chat/completions" if url.endswith("/v1") else "/v1/chat/completions")


class EndpointUsage(BaseModel):
    """What an endpoint reported and cost."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    retries: int = Field(default=0, description="Calls sent again after a 429, a 5xx or a timeout.")
    retried_statuses: dict[str, int] = Field(default_factory=dict, description="Why, counted.")


@dataclass
class EndpointAnswers:
    answers: list[str]
    usage: EndpointUsage
    seconds: float


@dataclass
class _State:
    token_field: str = "max_tokens"
    usage: EndpointUsage = field(default_factory=EndpointUsage)


def retry_after_s(value: str | None, now: float | None = None) -> float | None:
    """A Retry-After header's wait in seconds (a number, or an HTTP date); None without one."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (now if now is not None else time.time()))


def backoff_s(attempt: int, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter: a random wait up to base * 2^attempt (capped)."""
    return rng.uniform(0, min(cap_s, base_s * 2**attempt))


async def _ask(
    endpoint: Endpoint,
    prompts: Sequence[Sequence[dict[str, str]]],
    max_tokens: int,
    concurrency: int,
    retries: int,
    timeout_s: float,
    backoff_base_s: float,
    backoff_cap_s: float,
    seed: int,
) -> tuple[list[str], EndpointUsage]:
    import httpx

    headers = {"Authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else {}
    limit = asyncio.Semaphore(concurrency)
    rng = random.Random(seed)
    state = _State()
    timeout = httpx.Timeout(timeout_s, connect=min(10.0, timeout_s))

    async with httpx.AsyncClient(timeout=timeout, headers=headers) as client:

        async def one(messages: Sequence[dict[str, str]]) -> str:
            attempt = 0
            while True:
                body = {"model": endpoint.model, "messages": list(messages), "temperature": 0}
                body[state.token_field] = max_tokens
                why: str
                wait: float | None = None
                async with limit:
                    try:
                        r = await client.post(endpoint.chat_url(), json=body)
                    except (httpx.TimeoutException, httpx.TransportError) as exc:
                        why = type(exc).__name__
                    else:
                        if r.status_code == 200:
                            return _read(endpoint, r.json(), state)
                        if (
                            r.status_code == 400
                            and state.token_field == "max_tokens"
                            and "max_tokens" in r.text
                        ):
                            state.token_field = "max_completion_tokens"  # o1-style models refuse max_tokens
                            continue
                        if r.status_code not in RETRY_STATUSES:
                            raise TrainingError(
                                f"endpoint {endpoint.name} ({endpoint.url}, model {endpoint.model}) answered "
                                f"{r.status_code}: {r.text[:300]}",
                                hint="check the URL, the model and the key (key-env=VAR)",
                            )
                        why = str(r.status_code)
                        wait = retry_after_s(r.headers.get("retry-after"))
                if attempt >= retries:
                    raise TrainingError(
                        f"endpoint {endpoint.name} ({endpoint.url}) still failed after {retries} retries: last {why}",
                        hint="lower --endpoint-concurrency, or try again later",
                    )
                state.usage.retries += 1
                state.usage.retried_statuses[why] = state.usage.retried_statuses.get(why, 0) + 1
                delay = backoff_s(attempt, backoff_base_s, backoff_cap_s, rng)
                await asyncio.sleep(max(delay, wait or 0.0))
                attempt += 1

        answers = list(await asyncio.gather(*(one(p) for p in prompts)))
    u = state.usage
    u.cost_usd = round(
        u.prompt_tokens / 1e6 * endpoint.price_in_per_1m
        + u.completion_tokens / 1e6 * endpoint.price_out_per_1m,
        6,
    )
    return answers, u


def _read(endpoint: Endpoint, data: object, state: _State) -> str:
    try:
        assert isinstance(data, dict)
        content = data["choices"][0]["message"].get("content")
        usage = data.get("usage") or {}
    except (AssertionError, KeyError, IndexError, TypeError, AttributeError):
        raise TrainingError(f"endpoint {endpoint.name} answered 200 without choices[0].message") from None
    state.usage.prompt_tokens += int(usage.get("prompt_tokens") or 0)
    state.usage.completion_tokens += int(usage.get("completion_tokens") or 0)
    return str(content or "")


def ask(
    endpoint: Endpoint,
    prompts: Sequence[Sequence[dict[str, str]]],
    max_tokens: int,
    *,
    concurrency: int = 8,
    retries: int = 6,
    timeout_s: float | None = None,
    backoff_base_s: float = 0.5,
    backoff_cap_s: float = 30.0,
    seed: int = 0,
) -> EndpointAnswers:
    """Every prompt's answer from `endpoint` (greedy), with the usage and cost it reported.
    `timeout_s`: of one call (default: the endpoint's)."""
    started = time.perf_counter()
    answers, usage = asyncio.run(
        _ask(
            endpoint,
            prompts,
            max_tokens,
            concurrency,
            retries,
            timeout_s if timeout_s is not None else endpoint.timeout_s,
            backoff_base_s,
            backoff_cap_s,
            seed,
        )
    )
    return EndpointAnswers(answers, usage, time.perf_counter() - started)
