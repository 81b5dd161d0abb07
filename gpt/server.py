"""The completions server's web application: OpenAI's completions API over gpt.generate.

``python -m gpt.serve`` (gpt/serve.py) parses its options and starts this app with uvicorn; the
request checks live in gpt.completions and the batching of requests in gpt.batching.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sys
import time
import uuid
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

try:
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route
except ImportError:  # one line, as for any other bad setup (gpt.errors)
    print("error: serving needs the serve extra: pip install -e '.[serve]'", file=sys.stderr)
    sys.exit(2)

from gpt.batching import Batcher, Job
from gpt.completions import ChoiceText, CompletionRequest, RequestError, parse_request
from gpt.config import ServeConfig
from gpt.errors import UserError
from gpt.generate import encode_prompt, resolve_context_mode
from gpt.tokenizer import Tokenizer


def error_response(message: str, status: int, kind: str, param: str | None = None, code: str | None = None):
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


# ----------------------------------------------------------------------------------------------
# One request in flight


class JobFailed(Exception):
    pass


class Completion:
    """The jobs of one request (one per prompt) and the texts of its choices (n per prompt)."""

    def __init__(self, server: Server, req: CompletionRequest, prompt_ids: list[list[int]]):
        self.server, self.req = server, req
        self.id = f"cmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.prompt_tokens = sum(len(ids) for ids in prompt_ids)
        self.choices = [ChoiceText(server.tokenizer, req.stop) for _ in range(len(prompt_ids) * req.n)]
        self.events: asyncio.Queue[tuple[int, str, Any]] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        seed = req.seed if req.seed is not None else random.randrange(2**63)
        self.jobs = [
            Job(ids, req.n, req.max_tokens, req.temperature, req.top_k, req.top_p, seed, partial(self._emit, loop, i))
            for i, ids in enumerate(prompt_ids)
        ]
        self.open = [True] * len(self.jobs)
        self.next_check = time.monotonic()  # when to look whether the client went away
        for job in self.jobs:
            server.batcher.submit(job)

    def _emit(self, loop: asyncio.AbstractEventLoop, job: int, kind: str, data: Any) -> None:
        """Called from the decoding thread: hand the event to the event loop."""
        loop.call_soon_threadsafe(self.events.put_nowait, (job, kind, data))

    def cancel(self) -> None:
        for job in self.jobs:
            job.cancelled = True

    async def updates(self, request: Request | None = None) -> AsyncIterator[list[tuple[int, str, str | None]]]:
        """(choice index, new text, the finish reason if it just finished) for the choices of the event's job."""
        while any(self.open):
            job, kind, data = await self._next_event(request)
            if not self.open[job]:
                continue
            if kind == "error":
                raise JobFailed(data)
            mine = self.choices[job * self.req.n : (job + 1) * self.req.n]
            running = [c.finish_reason is None for c in mine]
            if kind == "tokens":
                texts = [choice.add(token) for choice, token in zip(mine, data, strict=True)]
            else:  # "end": max_tokens reached
                texts = [choice.end() for choice in mine]
            if all(c.finish_reason for c in mine):
                self.open[job] = False
                self.jobs[job].cancelled = True  # every sample stopped: free its rows now
            first = job * self.req.n
            yield [
                (first + i, text, c.finish_reason if was_running else None)  # a finish reason is told once
                for i, (c, text, was_running) in enumerate(zip(mine, texts, running, strict=True))
            ]

    async def _next_event(self, request: Request | None) -> tuple[int, str, Any]:
        """The next event; with a request (not streamed), checks twice a second that its client is still there."""
        if request is None:
            return await self.events.get()
        while True:
            if time.monotonic() > self.next_check:
                self.next_check = time.monotonic() + 0.5
                if await request.is_disconnected():
                    raise ConnectionAbortedError("the client went away")
            try:
                return await asyncio.wait_for(self.events.get(), timeout=0.5)
            except asyncio.TimeoutError:
                pass

    def usage(self) -> dict:
        completion_tokens = sum(c.tokens for c in self.choices)
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": self.prompt_tokens + completion_tokens,
        }

    def body(self, choices: list[dict], usage: dict | None) -> dict:
        body = {
            "id": self.id, "object": "text_completion", "created": self.created, "model": self.server.model_name,
            "choices": choices,
        }  # fmt: skip
        if usage is not None:
            body["usage"] = usage
        return body

    async def whole(self, request: Request) -> dict:
        async for _ in self.updates(request):
            pass
        choices = [
            {"text": c.text, "index": i, "logprobs": None, "finish_reason": c.finish_reason}
            for i, c in enumerate(self.choices)
        ]
        return self.body(choices, self.usage())

    async def sse(self) -> AsyncIterator[str]:
        """Server-sent events as OpenAI streams completions: a chunk per choice that moved on, then [DONE]."""
        try:
            async for moved in self.updates():
                for index, text, reason in moved:
                    if text or reason:
                        choice = {"text": text, "index": index, "logprobs": None, "finish_reason": reason}
                        yield _event(self.body([choice], None))
        except JobFailed as e:
            yield _event({"error": {"message": str(e), "type": "server_error", "param": None, "code": None}})
            return
        if self.req.include_usage:
            yield _event(self.body([], self.usage()))
        yield "data: [DONE]\n\n"


def _event(body: dict) -> str:
    return f"data: {json.dumps(body)}\n\n"


class CompletionStream(StreamingResponse):
    """A streamed completion whose jobs are cancelled however the stream ends (a client that
    disconnects frees its rows at the next step)."""

    def __init__(self, completion: Completion):
        super().__init__(completion.sse(), media_type="text/event-stream")
        self.completion = completion

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.completion.cancel()


# ----------------------------------------------------------------------------------------------
# The application


class Server:
    def __init__(self, cfg: ServeConfig, model, tokenizer: Tokenizer, model_name: str):
        self.cfg, self.tokenizer, self.model_name = cfg, tokenizer, model_name
        self.batcher = Batcher(model, cfg.max_batch, cfg.max_batches, resolve_context_mode(model, cfg.context_mode))
        self.created = int(time.time())

    def encode(self, prompts: list[str]) -> list[list[int]]:
        try:
            return [encode_prompt(self.tokenizer, p) for p in prompts]
        except UserError as e:
            raise RequestError(f"prompt: {e}", "prompt") from None

    async def completions(self, request: Request) -> Response:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RequestError("the request body is not valid JSON") from None
        req = parse_request(body, self.model_name, self.cfg.max_batch, self.cfg.max_tokens)
        completion = Completion(self, req, self.encode(req.prompts))
        if req.stream:
            return CompletionStream(completion)
        try:
            return JSONResponse(await completion.whole(request))
        except JobFailed as e:
            return error_response(str(e), 500, "server_error")
        except ConnectionAbortedError:
            return Response(status_code=499)  # nobody reads it; 499: nginx's "client closed request"
        finally:
            completion.cancel()

    async def models(self, request: Request) -> Response:
        model = {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "gpt"}
        return JSONResponse({"object": "list", "data": [model]})

    async def health(self, request: Request) -> Response:
        alive = self.batcher.alive()
        body = {"status": "ok" if alive else "decoder stopped", "model": self.model_name}
        body["rows_in_flight"] = self.batcher.rows_in_flight()
        body["forward_passes"], body["rows_decoded"] = self.batcher.forward_passes, self.batcher.rows_decoded
        return JSONResponse(body, status_code=200 if alive else 503)

    def app(self) -> Starlette:
        routes = [
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/health", self.health, methods=["GET"]),
        ]
        handlers = {RequestError: _bad_request, HTTPException: _http_error, Exception: _server_error}
        return Starlette(routes=routes, exception_handlers=handlers, lifespan=self.lifespan)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        yield
        self.batcher.close()


async def _bad_request(request: Request, e: RequestError) -> Response:
    return error_response(str(e), 400, "invalid_request_error", e.param, e.code)


async def _http_error(request: Request, e: HTTPException) -> Response:
    return error_response(f"{request.method} {request.url.path}: {e.detail}", e.status_code, "invalid_request_error")


async def _server_error(request: Request, e: Exception) -> Response:
    return error_response(f"internal error ({type(e).__name__}); see the server log", 500, "server_error")
