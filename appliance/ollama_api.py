"""The Ollama-compatible API: the subset Home Assistant's integration and the `ollama` client use."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone

from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from . import prompts
from .engine import Engine, Finished, Request as Generation
from .errors import APIError, bad_request
from .http import field, read_json, unless_disconnected
from .llama import Sampling

VERSION = "0.12.0"  # the Ollama API level this mirrors; clients gate features on it


def error_response(err: APIError) -> JSONResponse:
    return JSONResponse({"error": err.message}, status_code=err.status, headers=err.headers())


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _name(engine: Engine, body: dict) -> str:
    name = field(body, "model", str, required=True)
    engine.check_model(name)
    return name


def _options(body: dict) -> tuple[Sampling, int | None, tuple[str, ...]]:
    options = field(body, "options", dict, {})
    stop = field(options, "stop", list, [])
    if not all(isinstance(s, str) for s in stop):
        raise bad_request("'options.stop' must be an array of strings", "options.stop")
    predict = field(options, "num_predict", int)
    sampling = Sampling(temperature=field(options, "temperature", float, 0.8, low=0, high=2),
                        top_p=field(options, "top_p", float, 0.9, low=0, high=1),
                        top_k=field(options, "top_k", int, 40, low=0),
                        seed=field(options, "seed", int))
    return sampling, (predict if predict and predict > 0 else None), tuple(stop)


def _details(engine: Engine) -> dict:
    model = engine.model
    return {"parent_model": "", "format": "gguf", "family": model.meta("general.architecture") or "",
            "families": [model.meta("general.architecture") or ""],
            "parameter_size": f"{model.parameters / 1e6:.0f}M",
            "quantization_level": (model.meta("general.file_type") or "")}


async def _respond(request: Request, engine: Engine, name: str, generation: Generation, stream: bool, chat: bool):
    started = time.monotonic_ns()
    _, events = await unless_disconnected(request, engine.begin(generation))

    def piece(text: str) -> dict:
        out = {"model": name, "created_at": _now()}
        return out | ({"message": {"role": "assistant", "content": text}} if chat else {"response": text})

    def final(done: Finished, text: str = "") -> dict:
        total = time.monotonic_ns() - started
        return piece(text) | {
            "done": True, "done_reason": "length" if done.reason == "length" else "stop",
            "total_duration": total, "load_duration": 0, "prompt_eval_count": done.prompt_tokens,
            "prompt_eval_duration": 0, "eval_count": done.completion_tokens, "eval_duration": int(done.seconds * 1e9)}

    if not stream:
        async def collect():
            parts = []
            async for event in events:
                if isinstance(event, Finished):
                    return final(event, "".join(parts))
                parts.append(event)
        return JSONResponse(await unless_disconnected(request, collect()))

    async def lines():
        async for event in events:
            line = final(event) if isinstance(event, Finished) else piece(event) | {"done": False}
            yield json.dumps(line) + "\n"

    return StreamingResponse(lines(), media_type="application/x-ndjson")


async def chat(request: Request):
    engine: Engine = request.state.engine
    body = await read_json(request)
    name = _name(engine, body)
    try:
        messages = prompts.messages(body.get("messages"))
    except prompts.PromptError as err:
        raise bad_request(str(err), "messages") from None
    sampling, limit, stop = _options(body)
    generation = Generation(messages=messages, max_tokens=limit, stop=stop, sampling=sampling)
    return await _respond(request, engine, name, generation, field(body, "stream", bool, True), chat=True)


async def generate(request: Request):
    engine: Engine = request.state.engine
    body = await read_json(request)
    name = _name(engine, body)
    prompt = field(body, "prompt", str, "")
    if not prompt:  # Ollama's way of asking to load a model: it is loaded already
        return JSONResponse({"model": name, "created_at": _now(), "response": "", "done": True,
                             "done_reason": "load"})
    sampling, limit, stop = _options(body)
    if field(body, "raw", bool, False):
        generation = Generation(prompt=prompt, max_tokens=limit, stop=stop, sampling=sampling)
    else:
        system = field(body, "system", str)
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        generation = Generation(messages=messages, max_tokens=limit, stop=stop, sampling=sampling)
    return await _respond(request, engine, name, generation, field(body, "stream", bool, True), chat=False)


async def tags(request: Request):
    engine: Engine = request.state.engine
    if engine.model is None:
        return JSONResponse({"models": []})
    modified = datetime.fromtimestamp(engine.model.path.stat().st_mtime, timezone.utc).isoformat()
    return JSONResponse({"models": [
        {"name": f"{name}:latest", "model": f"{name}:latest", "modified_at": modified,
         "size": engine.model.path.stat().st_size, "digest": "", "details": _details(engine)}
        for name in engine.model_names()]})


async def show(request: Request):
    engine: Engine = request.state.engine
    body = await read_json(request)
    name = body.get("model") or body.get("name")
    if not isinstance(name, str):
        raise bad_request("'model' is required", "model")
    engine.check_model(name)
    model = engine.model
    return JSONResponse({
        "modelfile": "", "parameters": "", "template": engine.template.source, "details": _details(engine),
        "model_info": {"general.architecture": model.meta("general.architecture"),
                       "general.parameter_count": model.parameters,
                       "context_length": model.n_ctx},
        "capabilities": ["completion"], "modified_at": _now()})


async def version(request: Request):
    return JSONResponse({"version": VERSION})


routes = [
    Route("/api/chat", chat, methods=["POST"]),
    Route("/api/generate", generate, methods=["POST"]),
    Route("/api/tags", tags, methods=["GET"]),
    Route("/api/show", show, methods=["POST"]),
    Route("/api/version", version, methods=["GET"]),
]
