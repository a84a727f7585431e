"""The Ollama-compatible API: the subset Home Assistant's integration and the `ollama` client use."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import AsyncIterator

from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse

from .. import store
from ..downloads import Downloads
from ..errors import DownloadFailed, NotReady, ServiceError, UnknownModel
from ..inference import prompts
from ..inference.engine import Engine
from ..inference.generation import Finished, Request as Generation, Text
from ..inference.served import Served, model_id
from ..inference.replies import Calls, Thought, collect, read
from ..inference.tools import Offer
from . import bodies, constrained, models
from .auth import Identity, route
from .http import error_headers, parse, read_json, status_of, unless_disconnected

VERSION = "0.12.0"  # the Ollama API level this mirrors; clients gate features on it


def error_response(err: ServiceError) -> JSONResponse:
    return JSONResponse({"error": err.message}, status_code=status_of(err)[0], headers=error_headers(err))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _options(body: bodies.OllamaGenerating) -> dict:
    """What Ollama's `options` set.  A `num_ctx` above the loaded model's context is served at that context
    (inference.context_tokens)."""
    options = body.options
    return {"sampling": options.sampling, "max_tokens": options.limit, "stop": options.stop, "context": options.num_ctx}


def _details(served: Served) -> dict:
    return {"parent_model": "", "format": "gguf", "family": served.architecture, "families": [served.architecture],
            "parameter_size": f"{served.parameters / 1e6:.0f}M", "quantization_level": served.file_type}


async def _respond(request: Request, engine: Engine, name: str, generation: Generation, stream: bool, chat: bool,
                   thinking: bool | None, offer: Offer = Offer()):
    started = time.monotonic_ns()
    _, events = await unless_disconnected(request, engine.begin(generation))
    events = read(events, offer, thinking)

    def piece(text: str, calls: Calls = Calls(), thought: str = "") -> dict:
        out = {"model": name, "created_at": _now()}
        if not chat:
            return out | {"response": text} | ({"thinking": thought} if thought else {})
        message = {"role": "assistant", "content": text} | ({"thinking": thought} if thought else {})
        if calls.whole:  # a cut call's arguments are not yet the object Ollama gives
            message["tool_calls"] = [{"function": {"name": c.name, "arguments": c.arguments}} for c in calls.calls]
        return out | {"message": message}

    def final(done: Finished, text: str = "", calls: Calls = Calls(), thought: str = "") -> dict:
        total = time.monotonic_ns() - started
        return piece(text, calls, thought) | {
            "done": True, "done_reason": "length" if done.reason == "length" and not calls.whole else "stop",
            "total_duration": total, "load_duration": 0, "prompt_eval_count": done.prompt_tokens,
            "prompt_eval_duration": 0, "eval_count": done.completion_tokens, "eval_duration": int(done.seconds * 1e9)}

    if not stream:
        reply = await unless_disconnected(request, collect(events))
        return JSONResponse(final(reply.finished, reply.text, reply.calls, reply.thinking))

    async def lines():
        async for event in events:
            match event:
                case Thought():
                    yield piece("", thought=event.text) | {"done": False}
                case Text():
                    yield piece(event.text) | {"done": False}
                case Calls() if event.whole:  # as Ollama streams them: all calls in one message
                    yield piece("", event) | {"done": False}
                case Finished():
                    yield final(event)

    return _ndjson(lines())


def _ndjson(objects: AsyncIterator[dict]) -> StreamingResponse:
    """Ollama's stream: one JSON object a line.  An error once it has begun (the status line is sent
    already) is its last line, as Ollama sends it."""
    async def lines():
        try:
            async for line in objects:
                yield json.dumps(line) + "\n"
        except ServiceError as err:
            yield json.dumps({"error": err.message}) + "\n"

    return StreamingResponse(lines(), media_type="application/x-ndjson")


async def chat(request: Request):
    engine: Engine = request.state.engine
    body = parse(bodies.OllamaChat, await read_json(request))
    engine.check_model(models.engine_name(request, body.model))
    offer = constrained.tool_offer(request, body.tools)
    output = constrained.only_one(offer, body.format)
    thinking = constrained.thinking(engine, body.think, output, "think")
    # As Ollama does, a conversation longer than the context loses its oldest turns instead of failing.
    generation = Generation(messages=offer.messages(body.messages), truncate=True, tools=offer.tools, grammar=output,
                            think=bool(thinking), **_options(body))
    return await _respond(request, engine, body.model, generation, body.stream, True, thinking, offer)


async def generate(request: Request):
    engine: Engine = request.state.engine
    body = parse(bodies.OllamaGenerate, await read_json(request))
    engine.check_model(models.engine_name(request, body.model))
    if not body.prompt:  # Ollama's way of asking to load a model: it is loaded already
        return JSONResponse({"model": body.model, "created_at": _now(), "response": "", "done": True,
                             "done_reason": "load"})
    common = _options(body) | {"grammar": body.format}
    thinking = None if body.raw else constrained.thinking(engine, body.think, body.format, "think")
    if body.raw:
        generation = Generation(prompt=body.prompt, **common)
    else:
        system = [{"role": "system", "content": body.system}] if body.system else []
        generation = Generation(messages=system + [{"role": "user", "content": body.prompt}], truncate=True,
                                think=bool(thinking), **common)
    return await _respond(request, engine, body.model, generation, body.stream, False, thinking)


async def tags(request: Request):
    engine: Engine = request.state.engine
    served = engine.served
    if served is None:
        return JSONResponse({"models": []})
    file = served.path.stat()
    modified = datetime.fromtimestamp(file.st_mtime, timezone.utc).isoformat()
    tier = request.state.catalog.with_file(served.path.name)
    names = [f"{name}:latest" for name in (served.id, engine.ALIAS)] + ([tier.ollama] if tier else [])
    return JSONResponse({"models": [
        {"name": name, "model": name, "modified_at": modified, "size": file.st_size, "digest": "",
         "details": _details(served)} for name in names]})


async def show(request: Request):
    engine: Engine = request.state.engine
    name = parse(bodies.OllamaNamed, await read_json(request)).wanted
    engine.check_model(models.engine_name(request, name))
    served = engine.served
    if served is None:  # the alias, asked during a swap
        raise NotReady("the box is switching models; ask again in a few seconds", retry_after=5)
    return JSONResponse({
        "modelfile": "", "parameters": "", "template": served.template, "details": _details(served),
        "model_info": {"general.architecture": served.architecture or None,
                       "general.parameter_count": served.parameters,
                       "context_length": served.context_tokens},
        "capabilities": ["completion"] + (["tools"] if constrained.tool_family(request, served) else [])
        + (["thinking"] if prompts.thinks(served.template) else []), "modified_at": _now()})


async def running(request: Request):
    """GET /api/ps: the model in memory.  It stays loaded (expires_at far ahead) and runs on the CPU."""
    engine: Engine = request.state.engine
    served = engine.served
    if served is None:
        return JSONResponse({"models": []})
    return JSONResponse({"models": [
        {"name": f"{served.id}:latest", "model": f"{served.id}:latest", "size": served.size_bytes, "digest": "",
         "details": _details(served), "expires_at": "2318-01-01T00:00:00Z", "size_vram": 0,
         "context_length": served.context_tokens}]})


def _installed_file(request: Request, name: str) -> str | None:
    """The store's file for an Ollama name (`tiny`, `tiny:latest`, a catalog tier's `qwen2.5:1.5b`) or a file
    name."""
    wanted = models.engine_name(request, name).removesuffix(":latest")
    return next((f for f in store.installed(request.state.config.data.models)
                 if f == wanted or model_id(Path(f)) == wanted.lower()), None)


async def delete(request: Request):
    """DELETE /api/delete {"model": NAME}: an installed model; the one being served is refused."""
    name = parse(bodies.OllamaNamed, await read_json(request)).wanted
    file = _installed_file(request, name)
    if file is None:
        installed = store.installed(request.state.config.data.models)
        raise UnknownModel(f"model '{name[:80]}' not found; installed: {', '.join(sorted(installed)) or 'none'}",
                           param="model")
    await models.remove(request, file)
    return JSONResponse({})


PULL_POLL_SECONDS = 0.5


async def pull(request: Request):
    """POST /api/pull {"model": NAME}: a tier of the box's catalog, downloaded into the store (a model
    from anywhere else cannot be pulled: the catalog keeps only pins verified byte for byte).  An installed
    model is there already; progress streams as Ollama's does."""
    body = parse(bodies.OllamaPull, await read_json(request))
    name, stream = body.wanted, body.stream
    downloads: Downloads = request.state.downloads
    tier = request.state.catalog.named(name)
    if _installed_file(request, name) is None:
        if tier is None:
            raise UnknownModel(f"{request.state.catalog.unknown(name)} (installed: "
                               f"{', '.join(sorted(store.installed(request.state.config.data.models))) or 'none'})",
                               param="model")
        now = downloads.status()
        if not (now["state"] == "downloading" and now["tier"] == tier.name):  # else: watch the one running
            downloads.start(tier, request.state.config.data.models)

    async def progress():
        yield {"status": "pulling manifest"}
        while tier is not None and (now := downloads.status())["tier"] == tier.name and now["state"] == "downloading":
            yield {"status": f"pulling {tier.sha256[:12]}", "digest": f"sha256:{tier.sha256}", "total": now["total"],
                   "completed": now["done"]}
            await asyncio.sleep(PULL_POLL_SECONDS)
        now = downloads.status()
        if tier is not None and now["state"] in ("failed", "stopped") and now["tier"] == tier.name:
            raise DownloadFailed(f"pulling '{tier.name}' failed: {now['error']}")
        for status in ("verifying sha256 digest", "writing manifest", "success"):
            yield {"status": status}

    if not stream:
        async def last() -> dict:
            async for update in progress():
                pass
            return update
        return JSONResponse(await unless_disconnected(request, last()))
    return _ndjson(progress())


async def embed(request: Request):
    """POST /api/embed {"model", "input": TEXT or [TEXT], "truncate": true}: the served model's embeddings."""
    engine: Engine = request.state.engine
    body = parse(bodies.OllamaEmbed, await read_json(request))
    engine.check_model(models.engine_name(request, body.model))
    started = time.monotonic_ns()
    found = await unless_disconnected(request, constrained.embeddings(engine, body.input, body.truncate))
    return JSONResponse({"model": body.model, "embeddings": [e.vector for e in found], "total_duration":
                         time.monotonic_ns() - started, "load_duration": 0,
                         "prompt_eval_count": sum(e.tokens for e in found)})


async def embeddings(request: Request):
    """POST /api/embeddings {"model", "prompt"}: the older form, one text."""
    engine: Engine = request.state.engine
    body = parse(bodies.OllamaEmbeddings, await read_json(request))
    engine.check_model(models.engine_name(request, body.model))
    [found] = await unless_disconnected(request, constrained.embeddings(engine, (body.prompt,), True))
    return JSONResponse({"embedding": found.vector})


async def version(request: Request):
    return JSONResponse({"version": VERSION})


routes = [
    route("/api/chat", chat, needs=Identity.TOKEN, methods=["POST"]),
    route("/api/generate", generate, needs=Identity.TOKEN, methods=["POST"]),
    route("/api/tags", tags, needs=Identity.TOKEN, methods=["GET"]),
    route("/api/show", show, needs=Identity.TOKEN, methods=["POST"]),
    route("/api/version", version, needs=Identity.TOKEN, methods=["GET"]),
    route("/api/ps", running, needs=Identity.TOKEN, methods=["GET"]),
    route("/api/delete", delete, needs=Identity.TOKEN, methods=["DELETE"]),
    route("/api/pull", pull, needs=Identity.TOKEN, methods=["POST"]),
    route("/api/embed", embed, needs=Identity.TOKEN, methods=["POST"]),
    route("/api/embeddings", embeddings, needs=Identity.TOKEN, methods=["POST"]),
]
