"""OpenAI request bodies: parsed and checked by hand, so every refusal is a 400 that
names the field (`param`) the way OpenAI's API does."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ondeck_server.serve.llm.engine import Sampling
from ondeck_server.serve.llm.errors import ApiError, invalid

ROLES = ("system", "user", "assistant", "developer", "tool")
MAX_STOPS = 4
#: OpenAI's default for the legacy completions endpoint.
COMPLETIONS_DEFAULT_MAX_TOKENS = 16
#: accepted only at their neutral value
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "logit_bias": (None, {}),
    "best_of": (None, 1),
    "echo": (None, False),
    "suffix": (None, ""),
    "tools": (None, []),
    "functions": (None, []),
    "response_format": (None, {"type": "text"}),
}


@dataclass(frozen=True)
class Defaults:
    """What a request that leaves a sampling field out gets (`serve --default-*`;
    spec.llm.sampling)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int | None = None
    """None: 16 for completions (OpenAI's), what the context leaves for chat"""


@dataclass
class Parsed:
    model: str
    stream: bool
    include_usage: bool
    stop: list[str]
    sampling: Sampling
    prompt: str | list[int] = ""
    messages: list[dict[str, Any]] = field(default_factory=list)


def decode_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise invalid(f"the request body is not valid JSON: {exc}", None, "invalid_json") from None
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object", None, "invalid_json")
    return body


def parse_completion(body: dict[str, Any], defaults: Defaults = Defaults()) -> Parsed:
    parsed = _common(body, chat=False, defaults=defaults)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
    if isinstance(prompt, str):
        if not prompt:
            raise invalid("prompt must not be empty", "prompt")
        parsed.prompt = prompt
    elif (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in prompt)
    ):
        parsed.prompt = [int(t) for t in prompt]
    elif prompt is None:
        raise invalid("prompt is required", "prompt", "missing_required_parameter")
    else:
        raise invalid(
            "prompt must be a non-empty string, a list of one string, or a list of token ids "
            "(one prompt per request)",
            "prompt",
        )
    return parsed


def parse_chat(body: dict[str, Any], defaults: Defaults = Defaults()) -> Parsed:
    parsed = _common(body, chat=True, defaults=defaults)
    messages = body.get("messages")
    if messages is None:
        raise invalid("messages is required", "messages", "missing_required_parameter")
    if not isinstance(messages, list) or not messages:
        raise invalid("messages must be a non-empty list", "messages")
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise invalid(f"{where} must be an object with role and content", where)
        role = message.get("role")
        if role not in ROLES:
            raise invalid(
                f"{where}.role is {role!r}; expected one of {', '.join(ROLES)}", f"{where}.role"
            )
        content = message.get("content")
        if isinstance(content, list):
            texts = []
            for j, part in enumerate(content):
                if not (
                    isinstance(part, dict)
                    and part.get("type") == "text"
                    and isinstance(part.get("text"), str)
                ):
                    raise invalid(
                        f"{where}.content[{j}] must be a text part {{type: text, text: ...}} "
                        "(this model reads text only)",
                        f"{where}.content[{j}]",
                    )
                texts.append(part["text"])
            content = "".join(texts)
        if content is None and role == "assistant":
            content = ""
        if not isinstance(content, str):
            raise invalid(f"{where}.content must be a string", f"{where}.content")
        out.append({"role": role, "content": content})
    parsed.messages = out
    return parsed


def _common(body: dict[str, Any], *, chat: bool, defaults: Defaults) -> Parsed:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("model is required (a string; GET /v1/models lists it)", "model")
    for name, neutral in _NEUTRAL.items():
        if name in body and body[name] not in neutral:
            raise invalid(f"{name} is not supported by this server", name, "unsupported_parameter")
    n = body.get("n", 1)
    if n is not None and n != 1:
        raise invalid("only n=1 is supported", "n", "unsupported_parameter")
    logprobs = _logprobs(body, chat=chat)
    stream = _bool(body, "stream")
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not isinstance(options, dict):
            raise invalid("stream_options must be an object", "stream_options")
        if not stream:
            raise invalid("stream_options is only allowed with stream: true", "stream_options")
        include_usage = _bool(options, "include_usage", "stream_options.include_usage")
    max_tokens: int | None = None
    param = "max_tokens"
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise invalid(f"{name} must be an integer ≥ 1 (got {value!r})", name)
        max_tokens, param = value, name
        break
    temperature = _number(body, "temperature", defaults.temperature, low=0.0, high=2.0)
    top_p = _number(body, "top_p", defaults.top_p, low=0.0, high=1.0, open_low=True)
    top_k = body.get("top_k")
    if top_k is None:
        top_k = defaults.top_k
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < -1:
        raise invalid(f"top_k must be an integer ≥ -1 (-1 or 0: off), got {top_k!r}", "top_k")
    seed = body.get("seed")
    if seed is not None and not _int_in(seed, 0, 2**63 - 1):
        raise invalid(f"seed must be an integer in [0, 2^63), got {seed!r}", "seed")
    stop = body.get("stop")
    stops: list[str]
    if stop is None:
        stops = []
    elif isinstance(stop, str):
        stops = [stop] if stop else []
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stops = [s for s in stop if s]
    else:
        raise invalid("stop must be a string or a list of strings", "stop")
    if len(stops) > MAX_STOPS:
        raise invalid(f"stop holds at most {MAX_STOPS} strings", "stop")
    return Parsed(
        model=model,
        stream=stream,
        include_usage=include_usage,
        stop=stops,
        sampling=Sampling(
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=max(top_k, 0),
            default_max_tokens=defaults.max_tokens
            or (None if chat else COMPLETIONS_DEFAULT_MAX_TOKENS),
            max_tokens_param=param,
            seed=seed,
            logprobs=logprobs,
            presence_penalty=_number(body, "presence_penalty", 0.0, low=-2.0, high=2.0),
            frequency_penalty=_number(body, "frequency_penalty", 0.0, low=-2.0, high=2.0),
        ),
    )


MAX_TOP_LOGPROBS_CHAT = 20
MAX_LOGPROBS_COMPLETIONS = 5


def _logprobs(body: dict[str, Any], *, chat: bool) -> int | None:
    """How many alternatives per token to return with its log-probability; None: none.
    Chat: `logprobs: true` and `top_logprobs` 0-20; completions: `logprobs` 0-5."""
    value = body.get("logprobs")
    top = body.get("top_logprobs")
    if chat:
        wanted = _bool(body, "logprobs")
        if top is None:
            return 0 if wanted else None
        if not _int_in(top, 0, MAX_TOP_LOGPROBS_CHAT):
            raise invalid(
                f"top_logprobs must be an integer in [0, {MAX_TOP_LOGPROBS_CHAT}], got {top!r}",
                "top_logprobs",
            )
        if not wanted:
            raise invalid("top_logprobs needs logprobs: true", "top_logprobs")
        return int(top)
    if top is not None:
        raise invalid(
            "top_logprobs is a chat parameter; completions take logprobs: N",
            "top_logprobs",
            "unsupported_parameter",
        )
    if value is None:
        return None
    if not _int_in(value, 0, MAX_LOGPROBS_COMPLETIONS):
        raise invalid(
            f"logprobs must be an integer in [0, {MAX_LOGPROBS_COMPLETIONS}] for completions, "
            f"got {value!r}",
            "logprobs",
        )
    return int(value)


def _int_in(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _bool(body: dict[str, Any], name: str, param: str | None = None) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise invalid(f"{param or name} must be true or false", param or name)
    return value


def _number(
    body: dict[str, Any],
    name: str,
    default: float,
    *,
    low: float,
    high: float,
    open_low: bool = False,
) -> float:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise invalid(f"{name} must be a number", name)
    too_low = value <= low if open_low else value < low
    if too_low or value > high:
        interval = f"({low}, {high}]" if open_low else f"[{low}, {high}]"
        raise invalid(f"{name} must be in {interval}, got {value}", name)
    return float(value)


def unknown_model(name: str) -> ApiError:
    return ApiError(
        404, f"The model `{name}` does not exist", param="model", code="model_not_found"
    )
