"""The chat web UI: one page, and the conversations it keeps in the database."""

from __future__ import annotations

import json
import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from .. import conversations
from ..errors import InvalidRequest, NotFound
from ..inference import prompts
from ..inference.engine import Finished, Request as Generation
from .auth import Identity, page, public_files, route
from .http import field, read_json, unless_disconnected
from .pages import HERE, render

log = logging.getLogger(__name__)


async def chat_page(request: Request):
    return render(request, "chat.html", {"model": request.state.engine.model_id})


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


# The page is the owner's; its scripts and styles are public (they hold nothing of the owner's).  The
# conversations are the owner's too, and the API tokens the owner made may read and add to them.
OWNER = (Identity.OWNER, Identity.TOKEN)
routes = [
    page("/", chat_page),
    public_files("/static", HERE / "static"),
    route("/conversations", listing, needs=OWNER, methods=["GET"]),
    route("/conversations", create, needs=OWNER, methods=["POST"]),
    route("/conversations/{id}", show, needs=OWNER, methods=["GET"]),
    route("/conversations/{id}", delete, needs=OWNER, methods=["DELETE"]),
    route("/conversations/{id}/messages", send, needs=OWNER, methods=["POST"]),
]
