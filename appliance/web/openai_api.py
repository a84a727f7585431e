"""The OpenAI-compatible API: /v1/chat/completions, /v1/completions, /v1/models."""

from __future__ import annotations

import base64
import functools
import json
import secrets
import struct
import time

from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse

from ..errors import ServiceError
from ..inference.engine import Engine
from ..inference.generation import Finished, Request as Generation, Text
from ..inference.replies import Calls, Thought, collect, read
from ..inference.tools import Cut, Offer
from . import bodies, constrained
from .models import engine_name
from .auth import Identity, route
from .http import openai_error, parse, read_json, unless_disconnected


def _generation(request: Request, body: bodies.Sampled) -> tuple[Generation, Offer, bool | None]:
    """The job a request asks for, the tools it offers and how its reply is read for thinking."""
    engine: Engine = request.state.engine
    engine.check_model(engine_name(request, body.model))
    chat = isinstance(body, bodies.ChatCompletion)
    offer = constrained.tool_offer(request, body.tools, body.tool_choice, body.parallel_tool_calls) if chat else Offer()
    output = constrained.only_one(offer, body.response_format)
    common = {"max_tokens": body.limit, "stop": body.stop, "sampling": body.sampling, "ignore_eos": body.ignore_eos,
              "grammar": output}
    if chat:
        thinking = constrained.thinking(engine, body.reasoning_effort, output, "reasoning_effort")
        return Generation(messages=offer.messages(body.messages), tools=offer.tools, think=bool(thinking),
                          **common), offer, thinking
    return Generation(prompt=body.prompt, **common), offer, None


def _tool_calls(calls: Calls, streamed: bool) -> list[dict]:
    """OpenAI's tool_calls: ids of its own form, the arguments as a JSON string (a cut call's as far as
    they were written, as OpenAI gives them under finish_reason "length")."""
    return [({"index": i} if streamed else {}) | {
        "id": "call_" + secrets.token_hex(12), "type": "function",
        "function": {"name": call.name, "arguments": call.arguments if isinstance(call, Cut) else
                     json.dumps(call.arguments)}} for i, call in enumerate(calls.calls)]


SLOT = "\x00text\x00"


def _usage(done: Finished) -> dict:
    return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
            "total_tokens": done.prompt_tokens + done.completion_tokens}


def _choice(chat: bool, text: str | None, finish: str | None, delta: bool, calls: Calls = Calls(),
            thought: str = "") -> dict:
    """A completion's one choice: whole (`message`) or a streamed chunk of it (`delta`); a thinking model's
    thought in `reasoning_content`, as llama-server and DeepSeek give it."""
    if not chat:
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
    given = bool(calls.calls)
    reasoning = {"reasoning_content": thought} if thought else {}
    if delta:
        message = ({"content": text} if text else {}) | reasoning | (
            {"tool_calls": _tool_calls(calls, True)} if given else {})
    else:
        message = {"role": "assistant", "content": text or (None if given else "")} | reasoning | (
            {"tool_calls": _tool_calls(calls, False)} if given else {})
    return {"index": 0, ("delta" if delta else "message"): message, "logprobs": None, "finish_reason": finish}


def _finish_reason(done: Finished, calls: Calls) -> str:
    return "tool_calls" if calls.whole else "length" if done.reason == "length" else "stop"


async def _complete(request: Request, *, chat: bool):
    engine: Engine = request.state.engine
    body = parse(bodies.ChatCompletion if chat else bodies.Completion, await read_json(request))
    generation, offer, thinking = _generation(request, body)
    stream, include_usage = body.stream, body.include_usage
    kind = "chat.completion" if chat else "text_completion"

    choice = functools.partial(_choice, chat)
    started, events = await unless_disconnected(request, engine.begin(generation))
    events = read(events, offer, thinking)
    base = {"id": ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12), "created": int(time.time()),
            "model": started.model, "system_fingerprint": "paladin"}
    if not stream:
        reply = await unless_disconnected(request, collect(events))
        done = reply.finished
        return JSONResponse(base | {"object": kind, "choices": [choice(reply.text, _finish_reason(done, reply.calls),
                                                                        False, reply.calls, reply.thinking)],
                                    "usage": _usage(done)})

    chunk_kind = "chat.completion.chunk" if chat else "text_completion"

    def sse(choices: list, **extra) -> str:
        return "data: " + json.dumps(base | {"object": chunk_kind, "choices": choices} | extra) + "\n\n"

    # Every token chunk is the same JSON but for its text: serialize it once, splice the text in.
    head, tail = sse([choice(SLOT, None, True)]).split(json.dumps(SLOT))

    async def body_stream():
        if chat:
            yield sse([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        calls = Calls()
        try:
            async for event in events:
                match event:
                    case Thought():
                        yield sse([choice(None, None, True, thought=event.text)])
                    case Text():
                        yield head + json.dumps(event.text) + tail
                    case Calls():
                        calls = event
                        yield sse([choice(None, None, True, calls)])
                    case Finished():
                        yield sse([choice("", _finish_reason(event, calls), True)])
                        if include_usage:
                            yield sse([], usage=_usage(event))
        except ServiceError as err:  # the status is sent already: the SDKs raise the error object they read
            yield "data: " + openai_error(err).body.decode() + "\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(body_stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def chat_completions(request: Request):
    return await _complete(request, chat=True)


async def completions(request: Request):
    return await _complete(request, chat=False)


async def embeddings(request: Request):
    """POST /v1/embeddings {"model", "input", "encoding_format"}: float lists, or base64 of little-endian
    float32 (what the openai client asks for by default)."""
    engine: Engine = request.state.engine
    body = parse(bodies.Embeddings, await read_json(request))
    engine.check_model(engine_name(request, body.model))
    found = await unless_disconnected(request, constrained.embeddings(engine, body.input, True))
    tokens = sum(e.tokens for e in found)
    return JSONResponse({"object": "list", "model": engine.model_id, "usage": {"prompt_tokens": tokens,
                                                                             "total_tokens": tokens},
                         "data": [{"object": "embedding", "index": i, "embedding": _encoded(e.vector, body.encoding_format)}
                                  for i, e in enumerate(found)]})


def _encoded(vector: list[float], encoding: str) -> list[float] | str:
    return vector if encoding == "float" else base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


async def models(request: Request):
    engine: Engine = request.state.engine
    created = int(time.time())
    return JSONResponse({"object": "list", "data": [
        {"id": name, "object": "model", "created": created, "owned_by": "paladin"} for name in engine.model_names()]})


routes = [
    route("/v1/chat/completions", chat_completions, needs=Identity.TOKEN, methods=["POST"]),
    route("/v1/completions", completions, needs=Identity.TOKEN, methods=["POST"]),
    route("/v1/models", models, needs=Identity.TOKEN, methods=["GET"]),
    route("/v1/embeddings", embeddings, needs=Identity.TOKEN, methods=["POST"]),
]
