"""The chat web UI: one page, and the conversations it keeps in the database."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.templating import Jinja2Templates

from .. import conversations
from ..errors import InvalidRequest, NotFound
from ..inference import prompts
from ..inference.engine import Finished, Request as Generation
from .auth import Identity, public_files, route
from .http import field, read_json, unless_disconnected

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")


async def page(request: Request):
    return templates.TemplateResponse(request, "chat.html", {"model": request.state.engine.model_id})


def _conversation(request: Request) -> dict:
    found = conversations.get(request.state.db, request.path_params["id"])
    if found is None:
        raise NotFound("no such conversation")
    return found


async def listing(request: Request):
    return JSONResponse({"conversations": conversations.listing(request.state.db)})


async def create(request: Request):
    body = await read_json(request)
    return JSONResponse(conversations.create(request.state.db, field(body, "title", str, "New chat")), 201)


async def show(request: Request):
    return JSONResponse(_conversation(request))


async def delete(request: Request):
    conversations.delete(request.state.db, _conversation(request)["id"])
    return Response(status_code=204)


async def send(request: Request):
    """Store the owner's message, stream the reply as SSE, and store the reply (even a partial one)."""
    db, engine = request.state.db, request.state.engine
    conversation = _conversation(request)
    content = field(await read_json(request), "content", str, required=True)
    if not content.strip():
        raise InvalidRequest("'content' must not be empty", param="content")
    history = [{"role": m["role"], "content": m["content"]} for m in conversation["messages"]]
    generation = Generation(messages=prompts.messages(history + [{"role": "user", "content": content}]))
    _, events = await unless_disconnected(request, engine.begin(generation))
    conversations.add_message(db, conversation["id"], "user", content)

    async def stream():
        parts = []
        try:
            async for event in events:
                if isinstance(event, Finished):
                    yield f"data: {json.dumps({'done': True, 'reason': event.reason})}\n\n"
                else:
                    parts.append(event)
                    yield f"data: {json.dumps({'text': event})}\n\n"
        finally:
            if not conversations.add_message(db, conversation["id"], "assistant", "".join(parts)):
                log.info("conversation %s was deleted while its reply streamed; the reply is dropped",
                         conversation["id"])

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


# The page and its files are public (they hold nothing of the owner's); everything it shows comes
# from routes that need a token.
routes = [
    route("/", page, needs=Identity.PUBLIC, methods=["GET"]),
    public_files("/static", HERE / "static"),
    route("/conversations", listing, needs=Identity.TOKEN, methods=["GET"]),
    route("/conversations", create, needs=Identity.TOKEN, methods=["POST"]),
    route("/conversations/{id}", show, needs=Identity.TOKEN, methods=["GET"]),
    route("/conversations/{id}", delete, needs=Identity.TOKEN, methods=["DELETE"]),
    route("/conversations/{id}/messages", send, needs=Identity.TOKEN, methods=["POST"]),
]
