"""What both APIs share beyond plain completions: tools offered to the model, JSON replies, free or to a
schema, and embeddings.  The shapes differ per API; the grammar, the checks and the embedding jobs are
made here once (the calls are read back out of the text by inference/replies.py)."""

from __future__ import annotations

from ..errors import InvalidRequest, NotReady
from ..inference import grammar, tools
from ..inference.engine import Engine
from ..inference.generation import Embedded
from ..inference.grammar import Grammar, SchemaError
from ..inference.tools import Offer


def tool_offer(engine: Engine, offered: object, choice: object = "auto", parallel: bool = True) -> Offer:
    served = engine.served
    if offered and served is None:
        raise NotReady("the box is switching models; ask again in a few seconds", retry_after=5)
    try:
        return tools.offer(served.template if served else "", offered, choice, parallel)
    except SchemaError as err:
        raise InvalidRequest(str(err), param="tools") from None


def json_output(schema: object | None, where: str) -> Grammar:
    """Any JSON object (schema None), or JSON that validates against `schema`."""
    if schema is None:
        return grammar.ANY_JSON
    try:
        return grammar.from_schema(schema, where)
    except SchemaError as err:
        raise InvalidRequest(str(err), param=where) from None


def only_one(offer: Offer, output: Grammar | None) -> Grammar | None:
    if offer.grammar is not None and output is not None:
        raise InvalidRequest("ask for tools or for a JSON reply, not both in one request", param="tools")
    return offer.grammar or output


async def embeddings(engine: Engine, texts: tuple[str, ...], truncate: bool) -> list[Embedded]:
    """One embedding per text (web/bodies.py bounds them), in order."""
    return [await engine.embed(text, truncate) for text in texts]
