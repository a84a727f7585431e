"""What both APIs share beyond plain completions: tools offered to the model (and the calls read back
out of its text), JSON replies, free or to a schema, and embeddings.  The shapes differ per API; the
grammar, the checks, the split between words and calls and the embedding jobs are made here once."""

from __future__ import annotations

from typing import AsyncIterator

from ..errors import InvalidRequest, NotReady
from ..inference import grammar, tools
from ..inference.engine import Embedded, Engine, Finished
from ..inference.grammar import Grammar, SchemaError
from ..inference.tools import Call, Cut, Offer


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


def words_and_calls(events: AsyncIterator, offer: Offer) -> AsyncIterator[str | list[Call] | list[Cut] | Finished]:
    """The job's events with its tool calls read out: text as it streams, the calls (one list, once the
    job has finished: whole calls, or the one call the token limit cut) and then the job's `Finished`.
    Without tools, the job's own events: no extra step per token."""
    return events if offer.family is None else _split(events, offer)


async def _split(events: AsyncIterator, offer: Offer) -> AsyncIterator[str | list[Call] | list[Cut] | Finished]:
    family = offer.family
    splitter = tools.Splitter(family.start)
    async for event in events:
        if not isinstance(event, Finished):
            if words := splitter.feed(event):
                yield words
            continue
        words, calls = family.parse(splitter.held) if splitter.calling else (splitter.held, [])
        # A call the token limit cut (or cut inside its opening marker) is not words: its markup never reaches
        # the reply, whose finish reason, "length", says it was cut; the call, as far as it was written, is
        # given where calls go (once its tool's name is whole).  Only Llama 3's bare "{" can open words as
        # well, unless a call was required.
        markup = splitter.calling or family.start.startswith(splitter.held)
        cut = event.reason == "length" and not calls and markup
        if words and not (cut and (family.start != "{" or not offer.grammar.triggers)):
            yield words
        if calls:
            yield calls
        elif cut and splitter.calling and (partial := family.cut(splitter.held)):
            yield [partial]
        yield event


MAX_INPUTS = 64


async def embeddings(engine: Engine, raw: object, truncate: bool, where: str) -> list[Embedded]:
    """One embedding per input text (a string or a list of up to MAX_INPUTS), in order."""
    texts = [raw] if isinstance(raw, str) else raw
    if not isinstance(texts, list) or not 0 < len(texts) <= MAX_INPUTS or not all(isinstance(t, str) for t in texts):
        raise InvalidRequest(f"'{where}' is a string or a list of 1 to {MAX_INPUTS} strings (text only: token ids "
                             "are not taken)", param=where)
    return [await engine.embed(text, truncate) for text in texts]
