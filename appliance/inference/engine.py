"""The inference engine: one model, one worker thread, a bounded fair queue: one concept: the thread
that owns the model, and the jobs (completions, embeddings, swaps) it runs in turn.

llama.cpp contexts are not thread-safe and a small box has no spare cores for
parallel sequences, so one thread owns the model and runs jobs one at a time in
arrival order (FIFO is the fairness rule).  The event loop only admits jobs and
relays their tokens.

Model swaps (`Engine.swap`: the owner's choice, the resource watchdog) are queued
ahead of waiting jobs but never interrupt one: the in-flight job finishes on the
old model, every waiting job then runs on the new one.  No request fails because
of a swap: while one runs, requests naming the alias wait for it; if the new
model cannot be loaded, the old one is loaded again.

The event loop never touches the llama.cpp handles, which the inference thread
frees during a swap: it reads `Engine.served`, a snapshot taken at load time.
"""

from __future__ import annotations

import asyncio
import codecs
import itertools
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator

from .. import config as config_module
from ..errors import (GenerationFailed, InvalidRequest, ModelError, NotReady, PromptTooLong, QueueFull,
                      ServiceError, UnknownModel)
from ..metrics import Metrics
from . import prompts
from .generation import Embedded, Finished, Request, Started, Text
from .llama import Model, Sampler
from .probe import Proofs
from .served import Served, Strength, model_id
from .prompts import ChatTemplate
from .stops import MAX_STOP_CHARS, MAX_STOPS, StopScanner

log = logging.getLogger(__name__)
# Under a limit the client named, a reply held to a grammar from its first token keeps 1/CLOSING_SHARE of
# it for closing what it has open (Engine._limits).
CLOSING_SHARE = 4
# A reply of at least this many tokens measures the model's decoding speed well enough (Metrics.decoded).
MEASURED_TOKENS = 16


@dataclass
class Job:
    request: Request
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    queued_at: float = field(default_factory=time.monotonic)

    def emit(self, event) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    def cancel(self) -> None:
        self.cancelled.set()


@dataclass(order=True)
class _Item:
    priority: int
    seq: int
    work: object = field(compare=False)


@dataclass
class _Swap:
    path: Path | None
    strength: Strength
    done: asyncio.Future
    loop: asyncio.AbstractEventLoop


class Engine:
    SWAP, JOB = 0, 1

    def __init__(self, settings: config_module.InferenceConfig, metrics: Metrics, proofs: Proofs | None = None):
        """`proofs`: prove each model file and the CPU variant in a child before loading (the service's
        worker; probe.py says why); without it a model is loaded as it is."""
        self.settings = settings
        self.metrics = metrics
        self.proofs = proofs
        self.threads = settings.threads or config_module.default_threads()
        self.state = "no_model"
        self.reason = "no model is configured"
        self.served: Served | None = None
        self.model: Model | None = None  # the inference thread's alone, like the template
        self.template: ChatTemplate | None = None
        self._wanted: list[Path | None] = []  # the event loop's: models asked for by swaps not finished yet
        self._queue: queue.PriorityQueue[_Item] = queue.PriorityQueue()
        self._seq = itertools.count()
        self._waiting = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._work, name="inference", daemon=True)
        self._thread.start()

    # -- event-loop side -------------------------------------------------

    @property
    def full_strength(self) -> Strength:
        return Strength(self.threads, self.settings.context_tokens)

    async def swap(self, path: Path | None, strength: Strength | None = None) -> None:
        """Serve the model at `path` (at `strength`, else the configured one) from the next job on (None
        unloads); raises ModelError if it fails."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        if self.served is None and path is not None:
            self.state, self.reason = "loading", f"loading {path.name}"
        swap = _Swap(path, strength or self.full_strength, done, loop)
        self._queue.put(_Item(self.SWAP, next(self._seq), swap))
        self._wanted.append(path)
        try:
            await done
        finally:
            self._wanted.remove(path)

    @property
    def swapping(self) -> bool:
        return bool(self._wanted)

    def uses(self, path: Path) -> bool:
        """Whether the model at `path` is served or on its way in: its file must stay."""
        served = self.served
        return (served is not None and served.path == path) or path in self._wanted

    ALIAS = "paladin"  # whatever model the box serves now; stays valid across swaps

    @property
    def model_id(self) -> str | None:
        served = self.served
        return served.id if served else None

    def model_names(self) -> list[str]:
        served = self.served
        return [served.id, self.ALIAS] if served else []

    def check_model(self, name: str) -> None:
        """Refuse, rather than silently serve the default for, a model this box does not serve.

        During a swap the alias is accepted (the job waits for the swap and runs on whatever it loads)
        and other names are asked to come back.  The inference thread sets the state before it clears
        `served` and sets `served` before the state, so reading `served` first never mistakes a swap
        for a missing model."""
        served = self.served
        wanted = name.removesuffix(":latest")
        if served is not None and wanted in (served.id, self.ALIAS):
            return
        swapping = self.state == "swapping" or (served is None and self.state == "ready")
        if swapping and wanted == self.ALIAS:
            return
        if swapping:
            raise NotReady(f"the box is switching models; retry shortly, or name the model '{self.ALIAS}' to be "
                           "served by whichever model is loaded", retry_after=5)
        if served is None:
            raise NotReady(f"the model is not ready: {self.reason}", retry_after=5)
        raise UnknownModel(f"the model '{name}' does not exist on this box; it serves '{served.id}' and "
                           f"'{self.ALIAS}'", param="model")

    async def begin(self, request: Request) -> tuple[Started, AsyncIterator[Text | Finished]]:
        """Queue a job and wait until it starts; errors (queue full, prompt too long) raise here."""
        events = self.events(self.submit(request))
        return await anext(events), events

    def submit(self, request: Request) -> Job:
        if len(request.stop) > MAX_STOPS or any(len(stop) > MAX_STOP_CHARS for stop in request.stop):
            raise InvalidRequest(f"at most {MAX_STOPS} stop strings of at most {MAX_STOP_CHARS} characters each",
                                 param="stop")
        if self.state not in ("ready", "swapping"):
            raise NotReady(f"the model is not ready: {self.reason}", retry_after=5)
        with self._lock:
            if self._waiting >= self.settings.queue_size:
                raise QueueFull(f"the queue is full ({self._waiting} requests waiting); retry shortly",
                                retry_after=2)
            self._waiting += 1
            self.metrics.queue_depth = self._waiting
        job = Job(request, asyncio.get_running_loop())
        self._queue.put(_Item(self.JOB, next(self._seq), job))
        return job

    async def embed(self, text: str, truncate: bool) -> Embedded:
        """The served model's embedding of `text`, queued like any job; cut to one batch if `truncate`."""
        events = self.events(self.submit(Request(prompt=text, embed=True, truncate=truncate)))
        try:
            return await anext(events)
        finally:
            await events.aclose()

    async def events(self, job: Job) -> AsyncIterator[Started | Text | Embedded | Finished]:
        """Yield the job's events; stop generation if the consumer goes away."""
        try:
            while True:
                event = await job.events.get()
                if isinstance(event, Exception):
                    raise event
                yield event
                if isinstance(event, Finished):
                    return
        finally:
            job.cancel()

    async def close(self) -> None:
        """Stop after the job in flight; jobs still waiting are told the service is going away."""
        self._queue.put(_Item(self.SWAP, -1, None))
        await asyncio.to_thread(self._thread.join)

    def status(self) -> dict:
        served = self.served
        status = {"state": self.state, "reason": self.reason, "model": served and served.id,
                  "threads": served.threads if served else self.threads}
        if served is not None:
            status.update(path=str(served.path), context_tokens=served.context_tokens, size_bytes=served.size_bytes)
        return status

    # -- worker side -----------------------------------------------------

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item.work is None:
                self._unload()
                self._refuse_waiting()
                return
            if isinstance(item.work, _Swap):
                self._swap(item.work)
                continue
            job = item.work
            with self._lock:
                self._waiting -= 1
                self.metrics.queue_depth = self._waiting
            if job.cancelled.is_set():
                continue
            if self.model is None:  # a swap failed and left nothing loaded
                job.emit(NotReady(f"the model is not ready: {self.reason}", retry_after=5))
                continue
            try:
                self._run(job)
            except ServiceError as err:
                job.emit(err)
            except Exception as err:  # the job fails, the engine lives on with a fresh cache
                log.exception("generation failed")
                self.model.reset()
                job.emit(GenerationFailed(f"generation failed: {err}"))

    def _refuse_waiting(self) -> None:
        while not self._queue.empty():
            work = self._queue.get().work
            if isinstance(work, Job):
                work.emit(NotReady("the service is shutting down", retry_after=5))
            elif isinstance(work, _Swap):
                work.loop.call_soon_threadsafe(work.done.cancel)

    def _unload(self) -> None:
        self.served = None  # first: requests see a swap (check_model), never a model being freed
        if self.model is not None:
            self.model.close()
        self.model = self.template = None

    def _load(self, path: Path, strength: Strength) -> None:
        variant = self.settings.cpu_variant
        if self.proofs is not None:
            variant = self.proofs.prove(path, variant)
        model = Model(path, threads=strength.threads, context_tokens=strength.context_tokens, cpu_variant=variant)
        self.template = ChatTemplate(model.meta("tokenizer.chat_template"),
                                     model.special_text("bos"), model.special_text("eos"))
        self.model = model
        self.served = Served(id=model_id(path), path=model.path, size_bytes=model.size_bytes,
                             context_tokens=model.n_ctx, parameters=model.parameters,
                             architecture=model.meta("general.architecture") or "",
                             file_type=model.quantization, template=self.template.source,
                             threads=strength.threads)
        self.state, self.reason = "ready", "serving " + self.served.id
        self.metrics.model_loaded = 1
        log.info("loaded %s (%d threads, %d-token context)", path.name, strength.threads, model.n_ctx)

    def _swap(self, swap: _Swap) -> None:
        served = self.served
        previous = served.path if served else None
        if previous is not None:
            self.state, self.reason = "swapping", f"switching from {previous.name} to " + (
                swap.path.name if swap.path else "no model")
        self._unload()  # before loading: a swap down the ladder happens when memory is short
        self.metrics.model_loaded = 0
        if previous is not None:
            log.info("unloaded %s", previous.name)
        error = None
        try:
            if swap.path is not None:
                self._load(swap.path, swap.strength)
            else:
                self.state, self.reason = "no_model", "no model is configured"
        except Exception as err:  # anything but a ModelError is a bug: still never leave a swap unanswered
            error = err if isinstance(err, ModelError) else ModelError(f"{swap.path}: loading failed: {err!r}")
            log.error("%s", error, exc_info=not isinstance(err, ModelError))
            self.state, self.reason = "failed", str(err)
            if previous is not None:
                try:
                    self._load(previous, Strength(served.threads, served.context_tokens))
                except ModelError as again:  # its file went away meanwhile: the engine lives on without one
                    log.error("%s", again)

        def resolve() -> None:
            if not swap.done.done():
                swap.done.set_exception(error) if error else swap.done.set_result(None)
        swap.loop.call_soon_threadsafe(resolve)

    def _context(self, request: Request) -> int:
        return min(self.model.n_ctx, request.context or self.model.n_ctx)

    def _limits(self, request: Request, room: int) -> tuple[int, int | None]:
        """How many tokens the reply may have, and after how many it is steered to close what it has open.

        A reply held to a grammar from its first token (JSON, a schema, a required call) is useless cut
        short, so it is steered to close (a small model can ramble inside a string): Home Assistant's AI
        tasks name no limit, and at the owner's default such a reply gets the rest of the context to close
        in; under a limit the client named (Home Assistant's OpenAI integration names 150) the last quarter
        of it is kept for closing."""
        limit = request.max_tokens or min(self.settings.max_tokens, room)
        if request.grammar is None or request.grammar.triggers:
            return limit, None
        if request.max_tokens:
            return limit, limit - max(1, limit // CLOSING_SHARE)
        return room, limit

    def _embed(self, job: Job) -> None:
        model, request = self.model, job.request
        tokens = model.tokenize(request.prompt)
        if not tokens:
            raise InvalidRequest("an embedding input must not be empty", param="input")
        if len(tokens) > model.batch and not request.truncate:
            raise PromptTooLong(f"an embedding input is at most {model.batch} tokens; this one is {len(tokens)} "
                                "(or let the box truncate it)", param="input")
        job.emit(Embedded(model.embed(tokens[:model.batch]), min(len(tokens), model.batch)))

    def _run(self, job: Job) -> None:
        model, request = self.model, job.request
        if request.embed:
            return self._embed(job)
        start = time.monotonic()
        n_ctx = self._context(request)
        # Truncating, older turns go to leave the reply room for a useful answer, not only for whatever the
        # history left over; once none is left to go, a request that named no limit is served with the room
        # there is, as Ollama serves it (Home Assistant's tool results can fill most of the context).
        reserve = request.max_tokens or min(self.settings.max_tokens, n_ctx // 4)
        tokens, dropped, dropped_tokens = prompts.fitted(self.template, model.tokenize, request, n_ctx, reserve)
        try:
            sampler = Sampler(request.sampling, request.grammar, model.vocab)
        except ModelError as err:
            raise InvalidRequest(str(err)) from None
        limit, closing_at = self._limits(request, n_ctx - len(tokens))
        stops = request.stop + (tuple(self.template.stop_strings()) if request.messages is not None else ())
        scanner = StopScanner(stops)
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        special = request.tools is not None or request.think  # a tool-call or thought marker may be a control token
        reason, generated, decoding = "length", 0, start
        try:
            self.metrics.prompt_tokens_dropped += dropped_tokens
            reused = model.prefill(tokens, job.cancelled.is_set)
            job.emit(Started(len(tokens), reused, self.served.id, dropped, dropped_tokens))
            decoding = time.monotonic()
            while generated < limit:
                if generated == closing_at:
                    sampler.close_up(model.closers)
                if job.cancelled.is_set():
                    reason = "cancelled"
                    break
                token = sampler.sample(model.ctx)
                if model.is_end(token) and not request.ignore_eos:
                    reason = "stop"
                    break
                generated += 1
                text, stopped = scanner.feed(decoder.decode(model.piece(token, special)))
                if text:
                    job.emit(Text(text))
                if stopped:
                    reason = "stop"
                    break
                if generated < limit:
                    model.advance(token)
        finally:
            sampler.close()
        if reason == "length" and scanner.held:
            job.emit(Text(scanner.held))
        seconds = time.monotonic() - start
        self.metrics.finished(generated, seconds)
        if generated >= MEASURED_TOKENS and reason != "cancelled":
            self.metrics.decoded = (self.served.path.name, self.served.threads,
                                    generated / (time.monotonic() - decoding))
        job.emit(Finished(reason, len(tokens), generated, seconds))

