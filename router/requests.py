"""The completion requests the gateway accepts, typed: one decode checks every field it relies on.

    decode_request(endpoint, raw, settings) -> CompletionRequest

msgspec decodes the body into `ChatBody` or `PromptBody` (a 400 naming the field's path,
`messages[2].content`, when a field has the wrong type or range; fields the gateway does not read
pass through unchecked, for the engine to judge), then the limits that come from the settings
(`max_tokens_limit`, `max_n`) and the rules across fields are checked. The body is also kept as a
dict, as the client sent it, to be forwarded with the gateway's changes (the model, logprobs,
usage in streams).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
import orjson

from router.errors import BadRequestError
from router.settings import GatewaySettings

CHAT = "chat/completions"
COMPLETIONS = "completions"
MAX_TOP_LOGPROBS = 20  # OpenAI's bound on top_logprobs

Positive = Annotated[int, msgspec.Meta(ge=1)]
TopK = Annotated[int, msgspec.Meta(ge=0, le=MAX_TOP_LOGPROBS)]


class Message(msgspec.Struct, gc=False):
    role: str
    content: str | list[Any] | None = None


class StreamOptions(msgspec.Struct, gc=False):
    include_usage: bool | None = None


class _Common(msgspec.Struct, gc=False):
    model: Annotated[str, msgspec.Meta(min_length=1)]
    max_tokens: Positive | None = None
    max_completion_tokens: Positive | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    n: Positive | None = None
    best_of: Positive | None = None
    top_logprobs: TopK | None = None
    user: str | None = None
    session_id: str | None = None


class ChatBody(_Common, gc=False):
    messages: Annotated[list[Message], msgspec.Meta(min_length=1)] = msgspec.field(default_factory=list)
    logprobs: bool | None = None


class PromptBody(_Common, gc=False):
    prompt: str | list[Any] = ""
    logprobs: TopK | None = None


_DECODERS: dict[str, msgspec.json.Decoder[ChatBody] | msgspec.json.Decoder[PromptBody]] = {
    CHAT: msgspec.json.Decoder(ChatBody),
    COMPLETIONS: msgspec.json.Decoder(PromptBody),
}
_REQUIRED = {CHAT: "messages", COMPLETIONS: "prompt"}
_WHERE = re.compile(r" - at `\$\.?(?P<path>[^`]*)`$")
_MISSING = re.compile(r"^Object missing required field `(?P<field>[^`]+)`")


@dataclass(slots=True)
class CompletionRequest:
    """A checked request: its typed fields and its body as sent (`stream: null` dropped)."""

    endpoint: str
    typed: ChatBody | PromptBody
    body: dict[str, Any]

    @property
    def model(self) -> str:
        return self.typed.model

    @property
    def chat(self) -> bool:
        return self.endpoint == CHAT

    @property
    def stream(self) -> bool:
        return bool(self.typed.stream)

    @property
    def asked_usage(self) -> bool:
        """Whether the client asked for a stream's usage chunk (a JSON answer always has usage)."""
        options = self.typed.stream_options
        return not self.stream or bool(options is not None and options.include_usage)

    def user_key(self) -> str | None:
        """The body's sticky-user key: `user`, else `session_id`."""
        return self.typed.user or self.typed.session_id or None

    def system_text(self) -> str | None:
        """The system prompt as served (the first system turn), if any."""
        typed = self.typed
        if isinstance(typed, ChatBody):
            for message in typed.messages:
                if message.role == "system":
                    content = message.content
                    if isinstance(content, list):
                        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
                    return content
        return None

    def input_text(self) -> str:
        """The user's text: the last user turn, or the prompt."""
        typed = self.typed
        if isinstance(typed, ChatBody):
            for message in reversed(typed.messages):
                if message.role == "user":
                    content = message.content
                    if isinstance(content, list):
                        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
                    return content or ""
            return ""
        prompt = typed.prompt
        return prompt if isinstance(prompt, str) else " ".join(map(str, prompt))


def _bad_field(exc: msgspec.ValidationError) -> BadRequestError:
    text = str(exc)
    where = _WHERE.search(text)
    missing = _MISSING.match(text)
    if missing:
        field = missing["field"]
        if where and where["path"]:
            field = f"{where['path']}.{field}"
        return BadRequestError(f"'{field}' is required", param=field)
    if where is None or not where["path"]:
        return BadRequestError(f"the request body must be a JSON object: {text[0].lower()}{text[1:]}")
    path = where["path"]
    what = text[: where.start()]
    return BadRequestError(f"'{path}': {what[0].lower()}{what[1:]}", param=path)


def decode_request(endpoint: str, raw: bytes, settings: GatewaySettings) -> CompletionRequest:
    """The request in `raw`, checked; a BadRequestError names the first field that is wrong."""
    if not raw.strip():
        raise BadRequestError("the request has no body; send a JSON object")
    try:
        typed = _DECODERS[endpoint].decode(raw)
    except msgspec.ValidationError as exc:
        raise _bad_field(exc) from None
    except msgspec.DecodeError as exc:
        raise BadRequestError(f"the request body is not valid JSON: {exc}") from None
    required = _REQUIRED[endpoint]
    if not getattr(typed, required):
        raise BadRequestError(f"'{required}' is required and must not be empty", param=required)
    limit = settings.max_tokens_limit
    for key in ("max_tokens", "max_completion_tokens"):
        value = getattr(typed, key)
        if value is not None and value > limit:
            raise BadRequestError(
                f"'{key}' is {value}; this gateway allows at most {limit}", param=key, code="max_tokens"
            )
    for key in ("n", "best_of"):
        value = getattr(typed, key)
        if value is not None and value > settings.max_n:
            raise BadRequestError(
                f"'{key}' is {value}; this gateway allows at most {settings.max_n}", param=key
            )
    if isinstance(typed, ChatBody) and typed.top_logprobs is not None and typed.logprobs is not True:
        # As OpenAI answers; the engine would too, were the gateway not asking for logprobs itself.
        raise BadRequestError("'top_logprobs' needs 'logprobs': true", param="top_logprobs")
    body: dict[str, Any] = orjson.loads(raw)
    for key in ("stream", "stream_options"):
        if key in body and body[key] is None:
            del body[key]
    return CompletionRequest(endpoint, typed, body)
