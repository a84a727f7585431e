"""The chat web UI: one page, and the conversations it keeps in the database.

Replies stream as server-sent events: each piece of text as it comes, and now and then (and at the end)
the reply so far as sanitized HTML (`markdown.render`), so the browser never turns model output into
markup itself.  Rendering the whole reply again costs more as it grows (about 12 ms for 6 KB on the
build host, several times that on a small ARM board), so the pause between renders grows with it: at
least RENDER_SECONDS, and long enough that rendering takes at most RENDER_SHARE of the event loop's time.

A reply is stored when its stream ends, however it ends: finished, cut by its length, or stopped by the
owner (the browser hangs up).  A conversation takes one reply at a time (`Turns`): Regenerate pressed
right after Stop must find the stopped reply stored, or it would answer beside it instead of in its place.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import weakref
from typing import AsyncIterator, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from .. import conversations
from ..errors import Conflict, InvalidRequest, NotFound
from ..inference import prompts
from ..inference.generation import Finished, Request as Generation
from ..inference.replies import read
from ..inference.tools import Offer
from . import bodies, constrained, markdown
from .auth import Identity, page, public_files, route
from .http import parse, read_json, unless_disconnected
from .pages import HERE, render

log = logging.getLogger(__name__)
RENDER_SECONDS = 0.25
RENDER_SHARE = 0.1
TURN_SECONDS = 10  # how long a message waits for the reply before it (a hang-up is noticed within a token)


class Turns:
    """One reply at a time in each conversation: a turn waits for the one before to be stored, up to
    TURN_SECONDS (a reply still streaming in another window is a 409, not a wait of minutes)."""

    def __init__(self):
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    async def take(self, conversation_id: str) -> Callable[[], None]:
        """Wait for the conversation's turn; the caller must call what this returns once its reply is stored."""
        lock = self._locks.setdefault(conversation_id, asyncio.Lock())
        try:
            await asyncio.wait_for(lock.acquire(), TURN_SECONDS)
        except TimeoutError:
            raise Conflict("a reply is still being written in this conversation (in another window?); "
                           "wait for it to end or stop it") from None
        return lock.release


class TurnResponse(StreamingResponse):
    """A reply's stream that ends its turn however it ends: the stream is closed (and so its reply stored)
    first, even when the client left before the stream started."""

    def __init__(self, content: AsyncIterator[str], end_turn: Callable[[], None]):
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.end_turn = end_turn

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                await self.body_iterator.aclose()
            finally:
                self.end_turn()


async def chat_page(request: Request):
    return render(request, "chat.html", {"model": request.state.engine.model_id})


def _conversation(request: Request) -> dict:
    found = conversations.get(request.state.db, request.path_params["id"])
    if found is None:
        raise NotFound("no such conversation; it may have been deleted in another window (reload the list)")
    return found


async def listing(request: Request):
    return JSONResponse({"conversations": conversations.listing(request.state.db)})


async def create(request: Request):
    body = parse(bodies.NewConversation, await read_json(request))
    return JSONResponse(conversations.create(request.state.db, body.title), 201)


async def show(request: Request):
    """The conversation, with each reply also as sanitized HTML (`html`)."""
    conversation = _conversation(request)

    def rendered() -> None:  # a long conversation takes a while: not on the event loop
        for message in conversation["messages"]:
            if message["role"] == "assistant":
                message["html"] = markdown.render(message["content"])
    await asyncio.to_thread(rendered)
    return JSONResponse(conversation)


async def rename(request: Request):
    body = parse(bodies.Renamed, await read_json(request))
    if not conversations.rename(request.state.db, _conversation(request)["id"], body.title):
        raise NotFound("no such conversation")
    return JSONResponse({"id": request.path_params["id"], "title": body.title})


async def delete(request: Request):
    conversations.delete(request.state.db, _conversation(request)["id"])
    return Response(status_code=204)


async def send(request: Request):
    """The owner's message, stored once the model has taken it, and the reply streamed."""
    content = parse(bodies.OwnersMessage, await read_json(request)).content

    def turn(conversation: dict):
        return (conversation["messages"] + [{"role": "user", "content": content}], None,
                lambda: conversations.add_message(request.state.db, conversation["id"], "user", content))
    return await _reply(request, turn)


async def regenerate(request: Request):
    """A new reply to the last message the owner sent; the last reply, if it was the last message, goes."""
    def turn(conversation: dict):
        messages = conversation["messages"]
        replacing = messages[-1]["id"] if messages and messages[-1]["role"] == "assistant" else None
        history = messages[:-1] if replacing is not None else messages
        if not history or history[-1]["role"] != "user":
            raise InvalidRequest("there is no message of yours to answer again; send one", param="id")
        return history, replacing, None
    return await _reply(request, turn)


async def _reply(request: Request, turn: Callable[[dict], tuple]):
    """In the conversation's turn: `turn(conversation)` gives the history to answer, the reply it replaces
    and what to run once the model has taken it; queue the reply, stream it, store it."""
    db, engine = request.state.db, request.state.engine
    end_turn = await request.state.turns.take(request.path_params["id"])
    try:
        conversation = _conversation(request)
        history, replacing, accepted = turn(conversation)
        generation = Generation(messages=prompts.messages([{"role": m["role"], "content": m["content"]}
                                                           for m in history]), truncate=True)
        started, events = await unless_disconnected(request, engine.begin(generation))
        events = read(events, Offer(), constrained.thinking(engine, False, None, "think"))  # a thought is no answer
        if accepted:
            accepted()
    except BaseException:
        end_turn()
        raise

    async def stream() -> AsyncIterator[str]:
        parts, finish, next_render = [], "stopped", time.monotonic() + RENDER_SECONDS
        try:
            yield _event({"model": started.model, "dropped": started.dropped})
            async for event in events:
                if isinstance(event, Finished):
                    finish = event.reason
                    yield _event({"done": True, "reason": finish, "html": markdown.render("".join(parts))})
                    continue
                parts.append(event.text)
                update = {"text": event.text}
                if (now := time.monotonic()) >= next_render:
                    update["html"] = markdown.render("".join(parts))
                    next_render = time.monotonic() + max(RENDER_SECONDS, (time.monotonic() - now) / RENDER_SHARE)
                yield _event(update)
        finally:
            if not conversations.add_message(db, conversation["id"], "assistant", "".join(parts), finish=finish,
                                             dropped=started.dropped, replacing=replacing):
                log.info("conversation %s was deleted while its reply streamed; the reply is dropped",
                         conversation["id"])

    return TurnResponse(stream(), end_turn)


def _event(data: dict) -> str:
    return f"data: {json.dumps(data)}\n\n"


# The page is the owner's; its scripts and styles are public (they hold nothing of the owner's).  The
# conversations are the owner's too, and the API tokens the owner made may read and add to them.
OWNER = (Identity.OWNER, Identity.TOKEN)
routes = [
    page("/", chat_page),
    public_files("/static", HERE / "static"),
    route("/conversations", listing, needs=OWNER, methods=["GET"]),
    route("/conversations", create, needs=OWNER, methods=["POST"]),
    route("/conversations/{id}", show, needs=OWNER, methods=["GET"]),
    route("/conversations/{id}", rename, needs=OWNER, methods=["PATCH"]),
    route("/conversations/{id}", delete, needs=OWNER, methods=["DELETE"]),
    route("/conversations/{id}/messages", send, needs=OWNER, methods=["POST"]),
    route("/conversations/{id}/regenerate", regenerate, needs=OWNER, methods=["POST"]),
]
