"""A job's events as the APIs take them: the thinking a model writes before its answer, the text as it
streams, the tool calls read out of it, its end; and the whole reply collected from them.  Each API only
shapes these into its own pieces."""

from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterator

from ..errors import GenerationFailed
from .generation import Finished, Text
from .tools import Call, Cut, Offer, Splitter, opening


THINK, THOUGHT = "<think>", "</think>"


@dataclass(frozen=True, slots=True)
class Thought:
    """A piece of what a thinking model (Qwen 3) writes between <think> and </think>, before its answer."""
    text: str


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


Event = Thought | Text | Calls | Finished


@dataclass(frozen=True)
class Reply:
    text: str
    calls: Calls
    finished: Finished
    thinking: str = ""


def read(events: AsyncIterator, offer: Offer, thinking: bool | None) -> AsyncIterator[Event]:
    """The job's events as the APIs take them: its thinking (`thinking` None: the model's template does not
    think; False: what it thinks anyway is left out, never mixed into the answer), its words and its calls."""
    if thinking is not None:
        events = _thoughts(events, thinking)
    return words_and_calls(events, offer)


class _Thinking:
    """Splits a reply that opens with <think> into its thought and its answer as they stream: a possible
    beginning of either marker, and whitespace around the thought, is held until it is decided."""

    def __init__(self):
        self.state, self.held = "start", ""

    def feed(self, text: str) -> tuple[str, str]:
        """The thought and the answer `text` completes."""
        self.held += text
        if self.state == "start":
            opened = self.held.lstrip()
            if THINK.startswith(opened):
                return "", ""
            if not opened.startswith(THINK):
                self.state = "answer"
                return "", self._take(len(self.held))
            self.state, self.held = "thinking", opened[len(THINK):].lstrip()
        if self.state == "thinking":
            at = self.held.find(THOUGHT)
            if at < 0:
                return self._take(len(self.held[:len(self.held) - opening(self.held, THOUGHT)].rstrip())), ""
            thought = self.held[:at].rstrip()
            self.state, self.held = "after", self.held[at + len(THOUGHT):]
            return thought, self.feed("")[1]
        if self.state == "after":  # the blank lines between the thought and the answer
            if not self.held.strip():
                return "", ""
            self.state, self.held = "answer", self.held.lstrip()
        return "", self._take(len(self.held))

    def end(self) -> tuple[str, str]:
        """What is held when the reply ends: a thought the token limit cut, or words."""
        held, self.held = self.held, ""
        return (held, "") if self.state == "thinking" else ("", "" if self.state == "after" else held)

    def _take(self, n: int) -> str:
        taken, self.held = self.held[:n], self.held[n:]
        return taken


async def _thoughts(events: AsyncIterator, shown: bool) -> AsyncIterator:
    split = _Thinking()
    async for event in events:
        thought, words = split.end() if isinstance(event, Finished) else split.feed(event.text)
        if thought and shown:
            yield Thought(thought)
        if words:
            yield Text(words)
        if isinstance(event, Finished):
            yield event


def words_and_calls(events: AsyncIterator, offer: Offer) -> AsyncIterator[Event]:
    """The job's events with its tool calls read out: text as it streams, the calls (once the job has
    finished) and then the job's `Finished`.  Without tools, the job's own events: no extra step per token."""
    return events if offer.family is None else _split(events, offer)


async def _split(events: AsyncIterator, offer: Offer) -> AsyncIterator[Event]:
    family = offer.family
    splitter = Splitter(family.start)
    async for event in events:
        if isinstance(event, Thought):
            yield event
            continue
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
    """The whole reply: its text, its calls, how it finished and what the model thought first."""
    parts, thoughts, calls = [], [], Calls()
    async for event in events:
        match event:
            case Thought():
                thoughts.append(event.text)
            case Text():
                parts.append(event.text)
            case Calls():
                calls = event
            case Finished():
                return Reply("".join(parts), calls, event, "".join(thoughts))
    raise GenerationFailed("the reply ended without finishing")
