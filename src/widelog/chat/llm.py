"""The reference chat service's port to a chat-completion backend."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from widelog.cache.ports import ChatTurn


@dataclass(slots=True, frozen=True)
class LLMRequest:
    messages: Sequence[ChatTurn]
    prompt_version: str
    language: str | None = None


@dataclass(slots=True, frozen=True)
class LLMResponse:
    text: str
    model: str
    provider: str
    input_tokens: int
    output_tokens: int
    complete: bool = True  # False when the model was cut off (a length limit): never cached


class LLMError(Exception):
    """A failed completion; `code` (e.g. LLM_TIMEOUT) is what events and incidents group by."""

    def __init__(self, code: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.retryable = retryable


class LLMPort(Protocol):
    """A chat completion backend."""

    @property
    def model(self) -> str: ...

    async def complete(self, request: LLMRequest) -> LLMResponse:
        """The answer, or `LLMError` with a code; never another exception for provider failures."""
        ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...
