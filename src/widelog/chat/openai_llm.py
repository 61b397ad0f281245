"""An OpenAI-compatible chat completions client (OpenAI, vLLM, Ollama, LiteLLM, ...)."""

from __future__ import annotations

from typing import Any

import httpx

from widelog.chat.llm import LLMError, LLMRequest, LLMResponse


class OpenAICompatibleLLM:
    """`LLMPort` over `POST {base_url}/chat/completions`.

    Provider failures become `LLMError` codes (timeout, 429, content filter, 5xx) so events and
    incidents group them the same way whatever the provider. No retries here: the caller's
    deadline is the request's, and a retry storm against a rate-limited provider helps no one.
    """

    provider = "openai-compatible"

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout_s: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._model = model
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s, transport=transport
        )

    @property
    def model(self) -> str:
        return self._model

    async def complete(self, request: LLMRequest) -> LLMResponse:
        body = {
            "model": self._model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
        }
        try:
            response = await self._client.post("/chat/completions", json=body)
        except httpx.TimeoutException as exc:
            raise LLMError("LLM_TIMEOUT", f"no answer in time: {exc!r}", retryable=True) from exc
        except httpx.HTTPError as exc:
            raise LLMError("LLM_UNAVAILABLE", f"request failed: {exc!r}", retryable=True) from exc
        data = _json(response)
        if response.status_code == 429:
            raise LLMError("LLM_RATE_LIMITED", _message(data, response), retryable=True)
        if response.status_code == 400 and _code(data) == "content_filter":
            raise LLMError("CONTENT_FILTERED", _message(data, response))
        if response.status_code >= 400:
            retryable = response.status_code >= 500
            raise LLMError("LLM_UNAVAILABLE", _message(data, response), retryable=retryable)
        try:
            choice = data["choices"][0]
            text = choice["message"]["content"] or ""
            usage = data.get("usage") or {}
        except (KeyError, IndexError, TypeError) as exc:
            raise LLMError("LLM_BAD_RESPONSE", f"unexpected response shape: {exc!r}") from exc
        if choice.get("finish_reason") == "content_filter":
            raise LLMError("CONTENT_FILTERED", "the answer was stopped by the content filter")
        return LLMResponse(
            text=text,
            model=str(data.get("model") or self._model),
            provider=self.provider,
            input_tokens=int(usage.get("prompt_tokens") or 0),
            output_tokens=int(usage.get("completion_tokens") or 0),
            complete=choice.get("finish_reason") in {"stop", None},
        )

    async def ping(self) -> None:
        """Readiness: the provider answers at all (any HTTP status means it is reachable)."""
        try:
            await self._client.get("/models")
        except httpx.HTTPError as exc:
            raise LLMError("LLM_UNAVAILABLE", f"provider unreachable: {exc!r}") from exc

    async def close(self) -> None:
        await self._client.aclose()


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return {}


def _code(data: Any) -> str | None:
    error = data.get("error") if isinstance(data, dict) else None
    return error.get("code") if isinstance(error, dict) else None


def _message(data: Any, response: httpx.Response) -> str:
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])[:500]
    return f"HTTP {response.status_code}"
