"""The OpenAI-compatible API: /v1/chat/completions, /v1/completions, /v1/models."""

from __future__ import annotations

import json
import secrets
import time

from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse

from ..errors import InvalidRequest
from ..inference import prompts
from ..inference.engine import Engine, Finished, Request as Generation
from ..inference.llama import Sampling
from .auth import Identity, route
from .http import field, read_json, unless_disconnected


def _generation(body: dict, engine: Engine, *, chat: bool) -> Generation:
    engine.check_model(field(body, "model", str, required=True))
    stop = field(body, "stop", (str, list), [])
    stop = [stop] if isinstance(stop, str) else stop
    if len(stop) > 4 or not all(isinstance(s, str) for s in stop):
        raise InvalidRequest("'stop' must be a string or an array of up to 4 strings", param="stop")
    limit = field(body, "max_completion_tokens", int, low=1) or field(body, "max_tokens", int, low=1)
    sampling = Sampling(temperature=field(body, "temperature", float, 1.0, low=0, high=2),
                        top_p=field(body, "top_p", float, 1.0, low=0, high=1),
                        top_k=field(body, "top_k", int, 40, low=0),
                        seed=field(body, "seed", int))
    if field(body, "n", int, 1) != 1:
        raise InvalidRequest("only n=1 is supported", param="n")
    if body.get("logprobs") not in (None, False, 0) or body.get("top_logprobs") is not None:
        raise InvalidRequest("log probabilities are not returned by this box; send the request without "
                             "'logprobs' and 'top_logprobs'", param="logprobs")
    common = {"max_tokens": limit, "stop": tuple(stop), "sampling": sampling,
              "ignore_eos": field(body, "ignore_eos", bool, False)}
    if chat:
        try:
            messages = prompts.messages(body.get("messages"))
        except prompts.PromptError as err:
            raise InvalidRequest(str(err), param="messages") from None
        return Generation(messages=messages, **common)
    return Generation(prompt=field(body, "prompt", str, required=True), **common)


SLOT = "\x00text\x00"


def _usage(done: Finished) -> dict:
    return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
            "total_tokens": done.prompt_tokens + done.completion_tokens}


def _finish_reason(done: Finished) -> str:
    return "length" if done.reason == "length" else "stop"


async def _complete(request: Request, *, chat: bool):
    engine: Engine = request.state.engine
    body = await read_json(request)
    generation = _generation(body, engine, chat=chat)
    stream = field(body, "stream", bool, False)
    include_usage = bool(field(body, "stream_options", dict, {}).get("include_usage"))
    kind = "chat.completion" if chat else "text_completion"

    def choice(text: str, finish: str | None, delta: bool) -> dict:
        if not chat:
            return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        message = {"role": "assistant", "content": text} if not delta else ({"content": text} if text else {})
        return {"index": 0, ("delta" if delta else "message"): message, "logprobs": None, "finish_reason": finish}

    started, events = await unless_disconnected(request, engine.begin(generation))
    base = {"id": ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12), "created": int(time.time()),
            "model": started.model, "system_fingerprint": "paladin"}
    if not stream:
        async def collect() -> tuple[str, Finished]:
            parts = []
            async for event in events:
                if isinstance(event, Finished):
                    return "".join(parts), event
                parts.append(event)
        text, done = await unless_disconnected(request, collect())
        return JSONResponse(base | {"object": kind, "choices": [choice(text, _finish_reason(done), False)],
                                    "usage": _usage(done)})

    chunk_kind = "chat.completion.chunk" if chat else "text_completion"

    def sse(choices: list, **extra) -> str:
        return "data: " + json.dumps(base | {"object": chunk_kind, "choices": choices} | extra) + "\n\n"

    # Every token chunk is the same JSON but for its text: serialize it once, splice the text in.
    head, tail = sse([choice(SLOT, None, True)]).split(json.dumps(SLOT))

    async def body_stream():
        if chat:
            yield sse([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        async for event in events:
            if isinstance(event, Finished):
                yield sse([choice("", _finish_reason(event), True)])
                if include_usage:
                    yield sse([], usage=_usage(event))
            else:
                yield head + json.dumps(event) + tail
        yield "data: [DONE]\n\n"

    return StreamingResponse(body_stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def chat_completions(request: Request):
    return await _complete(request, chat=True)


async def completions(request: Request):
    return await _complete(request, chat=False)


async def models(request: Request):
    engine: Engine = request.state.engine
    created = int(time.time())
    return JSONResponse({"object": "list", "data": [
        {"id": name, "object": "model", "created": created, "owned_by": "paladin"} for name in engine.model_names()]})


routes = [
    route("/v1/chat/completions", chat_completions, needs=Identity.TOKEN, methods=["POST"]),
    route("/v1/completions", completions, needs=Identity.TOKEN, methods=["POST"]),
    route("/v1/models", models, needs=Identity.TOKEN, methods=["GET"]),
]
