"""A job's events as the APIs take them: the text as it streams, the tool calls read out of it, its end;
and the whole reply collected from them.  Each API only shapes these into its own pieces."""

from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterator

from ..errors import GenerationFailed
from .generation import Finished, Text
from .tools import Call, Cut, Offer, Splitter


@dataclass(frozen=True)
class Calls:
    """The tool calls of a reply, read out once its job has finished: whole calls, or the one call the token
    limit cut, as far as it was written (`cut`)."""
    calls: tuple[Call, ...] | tuple[Cut, ...] = ()

    @property
    def cut(self) -> bool:
        return bool(self.calls) and isinstance(self.calls[0], Cut)

    @property
    def whole(self) -> bool:
        return bool(self.calls) and not self.cut


Event = Text | Calls | Finished


@dataclass(frozen=True)
class Reply:
    text: str
    calls: Calls
    finished: Finished


def words_and_calls(events: AsyncIterator, offer: Offer) -> AsyncIterator[Event]:
    """The job's events with its tool calls read out: text as it streams, the calls (once the job has
    finished) and then the job's `Finished`.  Without tools, the job's own events: no extra step per token."""
    return events if offer.family is None else _split(events, offer)


async def _split(events: AsyncIterator, offer: Offer) -> AsyncIterator[Event]:
    family = offer.family
    splitter = Splitter(family.start)
    async for event in events:
        if not isinstance(event, Finished):
            if words := splitter.feed(event.text):
                yield Text(words)
            continue
        words, calls = family.parse(splitter.held) if splitter.calling else (splitter.held, [])
        # A call the token limit cut (or cut inside its opening marker) is not words: its markup never reaches
        # the reply, whose finish reason, "length", says it was cut; the call, as far as it was written, is
        # given where calls go (once its tool's name is whole).  Only Llama 3's bare "{" can open words as
        # well, unless a call was required.
        markup = splitter.calling or family.start.startswith(splitter.held)
        cut = event.reason == "length" and not calls and markup
        if words and not (cut and (family.start != "{" or not offer.grammar.triggers)):
            yield Text(words)
        if calls:
            yield Calls(tuple(calls))
        elif cut and splitter.calling and (partial := family.cut(splitter.held)):
            yield Calls((partial,))
        yield event


async def collect(events: AsyncIterator[Event]) -> Reply:
    """The whole reply: its text, its calls and how it finished."""
    parts, calls = [], Calls()
    async for event in events:
        match event:
            case Text():
                parts.append(event.text)
            case Calls():
                calls = event
            case Finished():
                return Reply("".join(parts), calls, event)
    raise GenerationFailed("the reply ended without finishing")
