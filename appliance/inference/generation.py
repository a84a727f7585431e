"""A generation as the engine takes it and gives it back: the request (with its sampling), and the events of
its job: `Started` once the prompt is read, `Text` pieces as they stream, `Finished` at its end; or one
`Embedded` for an embedding."""

from __future__ import annotations

from dataclasses import dataclass

from .grammar import Grammar


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    seed: int | None = None


@dataclass(frozen=True)
class Request:
    prompt: str | None = None
    messages: list[dict] | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    sampling: Sampling = Sampling()
    ignore_eos: bool = False  # llama-server's extension: generate exactly max_tokens (benchmarks)
    truncate: bool = False  # leave out the oldest turns of `messages` that do not fit the context
    tools: list[dict] | None = None  # offered to the model through its chat template (OpenAI's shape)
    grammar: Grammar | None = None  # what the output must match (JSON, a schema, tool calls)
    embed: bool = False  # the prompt's embedding (`Embedded`) instead of a completion
    context: int | None = None  # a smaller context than the model's for this request (Ollama's num_ctx)
    think: bool = False  # let a model whose template can think (prompts.thinks) think before it answers


@dataclass(frozen=True)
class Started:
    prompt_tokens: int
    reused_tokens: int
    model: str  # the id of the model the job runs on (a request for the alias may meet a swap)
    dropped: int = 0  # the oldest messages left out so that the rest fits the context (Request.truncate)
    dropped_tokens: int = 0  # and the prompt tokens they would have taken


@dataclass(frozen=True, slots=True)
class Text:
    """A piece of the reply as it streams."""
    text: str


@dataclass(frozen=True)
class Embedded:
    vector: list[float]
    tokens: int


@dataclass(frozen=True)
class Finished:
    reason: str  # "stop", "length" or "cancelled"
    prompt_tokens: int
    completion_tokens: int
    seconds: float
