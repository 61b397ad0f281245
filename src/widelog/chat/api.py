"""The reference chat service: a small LLM chat API instrumented with wide events."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from widelog._instrument import Widelog
from widelog.admin.probe_server import outcome
from widelog.admin.routes import admin_router
from widelog.chat.llm import LLMError
from widelog.chat.service import ChatQuery
from widelog.events.body_limit import BodyLimitMiddleware
from widelog.events.logging_service import event

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from widelog.chat.bootstrap import ChatContainer

# How each LLM failure looks to the API's client. The event keeps the precise code either way.
LLM_ERROR_STATUS = {
    "LLM_TIMEOUT": 504,
    "LLM_RATE_LIMITED": 503,
    "CONTENT_FILTERED": 422,
    "LLM_UNAVAILABLE": 502,
}


class CacheOptions(BaseModel):
    """Per-request control of the response cache (the session history is not a cache to skip).

    The standard `Cache-Control: no-cache` / `no-store` request directives mean the same.
    """

    model_config = ConfigDict(extra="forbid")

    no_cache: bool = False  # skip reading: ask the model even if an answer is cached
    no_store: bool = False  # skip writing: do not cache this answer
    # Seconds the answer it stores lives: can shorten WIDELOG_SEMANTIC_CACHE_TTL_S, not lengthen.
    ttl_s: Annotated[int | None, Field(ge=1, le=7 * 24 * 3600)] = None


class ChatRequest(BaseModel):
    session_id: Annotated[str, Field(min_length=1, max_length=128)]
    message: Annotated[str, Field(min_length=1)]
    language: Annotated[str | None, Field(max_length=16)] = None
    prompt_version: Annotated[str, Field(min_length=1, max_length=64)] = "v1"
    user_id: Annotated[str | None, Field(max_length=128)] = None
    stream: bool = False
    cache: CacheOptions = Field(default_factory=CacheOptions)


class ChatResponse(BaseModel):
    answer: str
    session_id: str
    model: str
    cached: bool = False  # served from the response cache


def create_app(container: ChatContainer, *, instrument: bool = True) -> FastAPI:
    """The chat API, instrumented with the wide-event middleware.

    `instrument=False` leaves the middleware out: the benchmarks' no-logging baseline, the same
    app and handlers, whose `event.set()` calls then go to a detached event.
    """

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await container.start()
        try:
            yield
        finally:
            await container.aclose()

    app = FastAPI(title="widelog reference chat service", lifespan=lifespan)
    _wrap(app, container, instrument=instrument)
    llm = container.llm
    service = container.chat
    max_chars = container.settings.max_message_chars

    @app.post("/v1/chat", response_model=ChatResponse)
    async def chat(body: ChatRequest, request: Request) -> Any:
        event.update(
            {
                "session_id": body.session_id,
                "user_id": body.user_id,
                "llm.provider": getattr(llm, "provider", "unknown"),
                "llm.model": llm.model,
                "llm.prompt_version": body.prompt_version,
                "llm.language": body.language,
                "chat.message_chars": len(body.message),
                "chat.stream": body.stream,
            }
        )
        if len(body.message) > max_chars:
            event.error("MESSAGE_TOO_LARGE", message=f"{len(body.message)} > {max_chars} chars")
            event.update({"cache.session": "bypass", "cache.semantic": "bypass"})
            return JSONResponse(
                {"detail": f"message longer than {max_chars} characters"}, status_code=413
            )
        directives = _cache_control(request.headers.get("cache-control", ""))
        query = ChatQuery(
            session_id=body.session_id,
            message=body.message,
            prompt_version=body.prompt_version,
            language=body.language,
            no_cache=body.cache.no_cache or "no-cache" in directives,
            no_store=body.cache.no_store or "no-store" in directives,
            ttl_s=body.cache.ttl_s,
        )
        try:
            answer = await service.answer(query)
        except LLMError as exc:
            event.error(exc.code, message=str(exc), kind="LLMError")
            status = LLM_ERROR_STATUS.get(exc.code, 502)
            return JSONResponse({"detail": str(exc), "code": exc.code}, status_code=status)
        if body.stream:
            return StreamingResponse(_chunks(answer.text), media_type="text/plain; charset=utf-8")
        return ChatResponse(
            answer=answer.text, session_id=body.session_id, model=answer.model, cached=answer.cached
        )

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """Ready unless a dependency requests need is down; a spooling MQ is degraded, not down."""
        checks = {"llm": llm.ping()}
        if container.pipeline.consumer is not None:
            checks["store"] = container.pipeline.store.ping()
        report: dict[str, Any] = {name: await outcome(check) for name, check in checks.items()}
        ready = all(v == "ok" for v in report.values())
        if container.pipeline.queue is not None:
            report["queue_depth"] = container.pipeline.queue.depth
        circuit = container.caches.breaker.state if container.caches.breaker else "closed"
        report["cache"] = "ok" if circuit == "closed" else f"degraded: circuit {circuit}"
        if container.pipeline.fallback is not None:
            down = getattr(container.pipeline.publisher, "broker_down", False)
            report["transport"] = "degraded: spooling events" if down else "ok"
            report["spool_pending"] = container.pipeline.fallback.spool.has_pending()
        return JSONResponse({"ready": ready, "checks": report}, status_code=200 if ready else 503)

    return app


def _wrap(app: FastAPI, container: ChatContainer, *, instrument: bool) -> None:
    """Middleware, error handlers and the admin routes around the chat handlers."""
    # Added first, so it runs inside the wide-event middleware: the event records the 413.
    app.add_middleware(BodyLimitMiddleware, max_bytes=container.settings.max_body_bytes)
    if instrument:
        Widelog(container.pipeline).attach(app)
    app.add_exception_handler(RequestValidationError, _validation_failed)
    app.include_router(admin_router(container.pipeline, caches=container.caches))


def _cache_control(header: str) -> set[str]:
    """The directive names of a `Cache-Control` header, lowercased (`max-age=0` → `max-age`)."""
    return {part.split("=", 1)[0].strip().lower() for part in header.split(",") if part.strip()}


async def _chunks(text: str) -> AsyncIterator[str]:
    for word in text.split(" "):
        yield word + " "
        await asyncio.sleep(0)


async def _validation_failed(_request: Request, exc: Exception) -> JSONResponse:
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    fields = sorted({".".join(str(p) for p in e.get("loc", ())[1:]) for e in errors})
    event.error("VALIDATION_ERROR", message=f"invalid fields: {', '.join(fields)}")
    event.set("validation.fields", fields)
    return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)


def app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory` and `widelog serve`: settings from the environment."""
    from widelog.chat.bootstrap import build  # noqa: PLC0415 - keeps import of this module side-effect free
    from widelog.config import Settings  # noqa: PLC0415

    return create_app(build(Settings()))
