"""What both APIs share beyond plain completions: tools offered to the model, thinking, JSON replies, free or
to a schema, and embeddings.  The shapes differ per API; the grammar, the checks and the embedding jobs are
made here once (the calls and the thinking are read back out of the text by inference/replies.py)."""

from __future__ import annotations

from starlette.requests import Request

from ..errors import InvalidRequest, NotReady
from ..inference import grammar, prompts, tools
from ..inference.engine import Engine
from ..inference.generation import Embedded
from ..inference.grammar import Grammar, SchemaError
from ..inference.served import Served
from ..inference.tools import Family, Offer


def _declared(request: Request, served: Served | None) -> str | None:
    """The tool format the served model's catalog tier declares; None when it is no tier (its template tells)."""
    tier = request.state.catalog.with_file(served.path.name) if served else None
    return tier.tools if tier else None


def tool_family(request: Request, served: Served) -> Family | None:
    return tools.family(served.template, _declared(request, served))


def tool_offer(request: Request, offered: object, choice: object = "auto", parallel: bool = True) -> Offer:
    served = request.state.engine.served
    if offered and served is None:
        raise NotReady("the box is switching models; ask again in a few seconds", retry_after=5)
    try:
        return tools.offer(served.template if served else "", offered, choice, parallel, _declared(request, served))
    except SchemaError as err:
        raise InvalidRequest(str(err), param="tools") from None


def thinking(engine: Engine, asked: bool, output: Grammar | None, param: str) -> bool | None:
    """How the reply is read for thinking: None when the served model cannot think (asking it to is refused,
    as Ollama refuses it), else whether it thinks this time.  A grammar held from the first token leaves it
    no room to."""
    served = engine.served
    if served is None or not prompts.thinks(served.template):
        if asked:
            raise InvalidRequest(f"the model '{engine.model_id}' does not think; send the request without "
                                 f"'{param}'", param=param)
        return None
    return asked and (output is None or bool(output.triggers))


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
