"""What both LLM transports speak: TGI's 3.3.6 protocol (`docs/contracts/tgi-openapi.json`)
and OpenAI's completions and chat (vLLM, OpenAI-compatible servers): request bodies, response
parsing, and the one mapping of an error status to a `rag.domain.errors.ApiError`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from rag.domain.errors import (
    ApiError,
    BadRequest,
    ModelError,
    ModelUnavailable,
    Throttled,
    UpstreamTimeout,
)
from rag.domain.ports import Generation, GenerationParams
from rag.domain.stops import cut_at_stop

Api = Literal["tgi", "openai"]
Engine = Literal["tgi", "vllm"]
"""The container behind a SageMaker endpoint: TGI's bodies, or vLLM's OpenAI-compatible ones."""

RETRY_AFTER_SCALE_FROM_ZERO_S = 60
"""Inference component at zero copies: scale-out starts ~1 min after the first failed call."""
RETRY_AFTER_ENDPOINT_MISSING_S = 300
"""Endpoint absent or still creating: creating a GPU endpoint takes several minutes."""
RETRY_AFTER_NOT_READY_S = 30
RETRY_AFTER_TRANSIENT_S = 5
RETRY_AFTER_OVERLOADED_S = 2
RETRY_AFTER_UNREACHABLE_S = 10

TGI_CHAT_MODEL = "tgi"
"""TGI ignores `model` in chat requests; its docs use "tgi"."""
MAX_REASON_CHARS = 300
"""Upstream reasons are quoted to the client, cut to this length."""
JSON_SCHEMA_NAME = "output"


def tgi_generate_body(
    prompt: str, params: GenerationParams, json_schema: Mapping[str, Any] | None
) -> dict[str, Any]:
    """TGI CompatGenerateRequest / GenerateRequest."""
    parameters: dict[str, Any] = {
        "max_new_tokens": params.max_new_tokens,
        "details": True,
        # SageMaker's TGI defaults return_full_text to true for text-generation models.
        "return_full_text": False,
        "stop": list(params.stop),
        **_sampling(params, temperature_zero_means_greedy=False),
    }
    if json_schema is not None:
        parameters["grammar"] = {"type": "json", "value": dict(json_schema)}
    return {"inputs": prompt, "parameters": parameters}


def tgi_chat_body(
    messages: Sequence[Mapping[str, str]],
    params: GenerationParams,
    json_schema: Mapping[str, Any] | None,
    *,
    model: str = TGI_CHAT_MODEL,
) -> dict[str, Any]:
    """TGI ChatRequest; `response_format` is TGI's GrammarType."""
    body = _chat_common(messages, params, model)
    if json_schema is not None:
        body["response_format"] = {"type": "json", "value": dict(json_schema)}
    return body


def openai_chat_body(
    messages: Sequence[Mapping[str, str]],
    params: GenerationParams,
    json_schema: Mapping[str, Any] | None,
    *,
    model: str,
) -> dict[str, Any]:
    body = _chat_common(messages, params, model)
    if json_schema is not None:
        body["response_format"] = _json_schema_format(json_schema)
    return body


def openai_completion_body(
    prompt: str, params: GenerationParams, json_schema: Mapping[str, Any] | None, *, model: str
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "prompt": prompt,
        "max_tokens": params.max_new_tokens,
        "stop": list(params.stop),
        **_sampling(params, temperature_zero_means_greedy=True),
    }
    if json_schema is not None:
        # vLLM's completions take the chat API's response_format too; its older `guided_json`
        # extra field is gone and would be ignored (vllm entrypoints/openai/completion/protocol.py).
        body["response_format"] = _json_schema_format(json_schema)
    return body


def _json_schema_format(json_schema: Mapping[str, Any]) -> dict[str, Any]:
    """OpenAI's structured output; vLLM enforces it with guided decoding (structured_outputs)."""
    return {
        "type": "json_schema",
        "json_schema": {"name": JSON_SCHEMA_NAME, "schema": dict(json_schema), "strict": True},
    }


def _chat_common(
    messages: Sequence[Mapping[str, str]], params: GenerationParams, model: str
) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [dict(m) for m in messages],
        "max_tokens": params.max_new_tokens,
        "stop": list(params.stop),
        **_sampling(params, temperature_zero_means_greedy=True),
    }


def _sampling(params: GenerationParams, *, temperature_zero_means_greedy: bool) -> dict[str, Any]:
    """Sampling fields TGI accepts: it rejects temperature <= 0 on /generate and top_p >= 1
    everywhere (422), while its chat and completions routes read temperature 0 as greedy."""
    out: dict[str, Any] = {}
    if params.temperature > 0:
        out["temperature"] = params.temperature
        if not temperature_zero_means_greedy:
            out["do_sample"] = True
    elif temperature_zero_means_greedy:
        out["temperature"] = 0.0
    else:
        out["do_sample"] = False
    if 0 < params.top_p < 1:
        out["top_p"] = params.top_p
    return out


def parse_generate_response(payload: Any, stop: Sequence[str] = ()) -> Generation:
    """TGI GenerateResponse, or the one-element list SageMaker's /invocations returns."""
    item = payload[0] if isinstance(payload, list) and len(payload) == 1 else payload
    if not isinstance(item, dict) or not isinstance(item.get("generated_text"), str):
        raise malformed("a generate response without generated_text")
    details = _dict(item.get("details"))
    prefill = details.get("prefill")
    return Generation(
        text=cut_at_stop(item["generated_text"], stop),
        # prefill is only filled when decoder_input_details is requested (costly), so often None.
        prompt_tokens=len(prefill) if isinstance(prefill, list) and prefill else None,
        completion_tokens=int_or_none(details.get("generated_tokens")),
        finish_reason=details.get("finish_reason"),
    )


def parse_chat_response(payload: Any, stop: Sequence[str] = ()) -> Generation:
    """ChatCompletion: choices[0].message.content + usage."""
    try:
        choice = payload["choices"][0]
        content = choice["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise malformed("a chat response without choices[0].message.content") from None
    if not isinstance(content, str):
        raise malformed("a chat response whose message content is not text")
    return _with_usage(payload, content, choice.get("finish_reason"), stop)


def parse_completion_response(payload: Any, stop: Sequence[str] = ()) -> Generation:
    """CompletionFinal: choices[0].text + usage."""
    try:
        choice = payload["choices"][0]
        text = choice["text"]
    except (KeyError, IndexError, TypeError):
        raise malformed("a completion response without choices[0].text") from None
    if not isinstance(text, str):
        raise malformed("a completion response whose text is not a string")
    return _with_usage(payload, text, choice.get("finish_reason"), stop)


def _with_usage(
    payload: Mapping[str, Any], text: str, finish: Any, stop: Sequence[str]
) -> Generation:
    usage = _dict(payload.get("usage"))
    return Generation(
        text=cut_at_stop(text, stop),
        prompt_tokens=int_or_none(usage.get("prompt_tokens")),
        completion_tokens=int_or_none(usage.get("completion_tokens")),
        finish_reason=finish if isinstance(finish, str) else None,
    )


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def decode_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise malformed("a body that is not JSON") from None


def malformed(what: str) -> ModelError:
    return ModelError(f"The model returned {what}.", code="model_bad_response")


def error_for_status(
    status: int, body: bytes | str, *, retry_after: str | None = None, where: str
) -> ApiError:
    """Map a TGI / OpenAI-compatible HTTP error status (DESIGN 3.1)."""
    reason = short_reason(body)
    if status in (400, 413, 422):
        return BadRequest(f"The model rejected the input: {reason}", code="model_input_invalid")
    if status == 429:
        return Throttled(
            f"The model is overloaded: {reason}",
            code="model_overloaded",
            retry_after_s=retry_after_header_s(retry_after, RETRY_AFTER_OVERLOADED_S),
        )
    if status == 404:
        return ModelUnavailable(
            f"No model answers at {where} (404).",
            code="endpoint_not_found",
            retry_after_s=RETRY_AFTER_ENDPOINT_MISSING_S,
        )
    if status == 503:
        return ModelUnavailable(
            f"The model is not available: {reason}",
            retry_after_s=retry_after_header_s(retry_after, RETRY_AFTER_NOT_READY_S),
        )
    if status == 504:
        return UpstreamTimeout(f"The model timed out: {reason}", code="model_timeout")
    return ModelError(f"The model failed (status {status}): {reason}")


def short_reason(body: bytes | str) -> str:
    """TGI ErrorResponse `error`, OpenAI `error.message`, else the text itself, shortened."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    reason = text.strip()
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        error = parsed.get("error")
        if isinstance(error, str):
            reason = error
        elif isinstance(error, dict) and isinstance(error.get("message"), str):
            reason = error["message"]
        elif isinstance(parsed.get("message"), str):
            reason = parsed["message"]
    reason = " ".join(reason.split()) or "no reason given"
    return reason if len(reason) <= MAX_REASON_CHARS else reason[: MAX_REASON_CHARS - 3] + "..."


def retry_after_header_s(header: str | None, default_s: int) -> int:
    if header is not None and header.strip().isdigit():
        return int(header.strip())
    return default_s


def stalled(stall_timeout_s: float) -> UpstreamTimeout:
    return UpstreamTimeout(
        f"The model sent nothing for {stall_timeout_s:g} s; the stream was stopped.",
        code="model_stalled",
    )
