"""The engine on real llama.cpp with generated models (milliseconds per test)."""

import asyncio
import json
import re
import shutil

import jsonschema
import pytest

from appliance import config
from appliance.errors import InvalidRequest, NotReady, PromptTooLong, QueueFull, ServiceError
from appliance.inference.engine import MEASURED_TOKENS, Engine
from appliance.inference.generation import Finished, Request, Sampling
from appliance.inference import replies
from appliance.inference.grammar import from_schema
from appliance.inference.prompts import older_turn_dropped
from appliance.inference.stops import StopScanner
from appliance.metrics import Metrics
from appliance.web.http import status_of

pytestmark = pytest.mark.unit
GREEDY = Sampling(temperature=0)


def settings(**changes):
    return config.parse({"inference": {"threads": 1, "context_tokens": 512} | changes}).inference


async def started_engine(model, **changes) -> Engine:
    engine = Engine(settings(**changes), Metrics())
    await engine.swap(model)
    return engine


async def collect(events) -> tuple[str, Finished]:
    reply = await replies.collect(events)
    return reply.text, reply.finished


def test_generated_model_never_ends_early_and_streams_valid_text(tiny_model):
    async def main():
        engine = await started_engine(tiny_model)
        started, events = await engine.begin(Request(prompt="hello", max_tokens=200, sampling=Sampling(seed=1)))
        text, done = await collect(events)
        await engine.close()
        return started, text, done

    started, text, done = asyncio.run(main())
    assert (done.reason, done.completion_tokens) == ("length", 200)
    assert started.prompt_tokens == done.prompt_tokens > 1
    assert "\ufffd" not in text and len(text) >= 200  # no byte tokens: every piece is whole UTF-8


def test_a_long_enough_reply_measures_the_models_decoding_speed(tiny_model):
    """What the speed estimates are scaled by (appliance/speed.py): the served file, its threads, tokens/s."""
    async def main():
        engine, seen = await started_engine(tiny_model), []
        for limit in (MEASURED_TOKENS - 1, MEASURED_TOKENS):
            _, events = await engine.begin(Request(prompt="hello", max_tokens=limit))
            await collect(events)
            seen.append(engine.metrics.decoded)
        await engine.close()
        return seen

    short, long = asyncio.run(main())
    assert short is None and long[:2] == ("tiny.gguf", 1) and long[2] > 0


def test_same_seed_same_text_and_prompt_cache_reused_across_turns(tiny_model):
    async def main():
        engine = await started_engine(tiny_model)
        first_turn = [{"role": "user", "content": "tell me a story"}]
        _, events = await engine.begin(Request(messages=first_turn, max_tokens=20, sampling=Sampling(seed=7)))
        reply, _ = await collect(events)
        second_turn = first_turn + [{"role": "assistant", "content": reply}, {"role": "user", "content": "more"}]
        started, events = await engine.begin(Request(messages=second_turn, max_tokens=20, sampling=Sampling(seed=7)))
        await collect(events)
        _, events = await engine.begin(Request(messages=first_turn, max_tokens=20, sampling=Sampling(seed=7)))
        again, _ = await collect(events)
        await engine.close()
        return reply, again, started

    reply, again, started = asyncio.run(main())
    assert reply == again
    assert started.reused_tokens > 10  # the whole first turn came from the KV cache


def test_stop_strings_are_found_across_token_boundaries():
    scanner = StopScanner(("END",))
    assert scanner.feed("abc E") == ("abc ", False)
    assert scanner.feed("N") == ("", False)
    assert scanner.feed("Dxyz") == ("", True)
    scanner = StopScanner(("END",))
    assert scanner.feed("EN") == ("", False)
    assert scanner.feed("x") == ("ENx", False)


def test_stop_scanner_backs_off_within_a_partial_match():
    scanner = StopScanner(("aab", "xyz"))
    assert [scanner.feed(piece) for piece in ("aa", "a", "b")] == [("", False), ("a", False), ("", True)]
    scanner = StopScanner(("abcd", "bc"))
    assert scanner.feed("abc") == ("a", True)  # the first stop string to appear ends the text


def test_stop_strings_are_bounded(tiny_model):
    async def main():
        engine = await started_engine(tiny_model)
        try:
            engine.submit(Request(prompt="x", max_tokens=4, stop=("a" * 400_000,)))
        finally:
            await engine.close()

    with pytest.raises(InvalidRequest, match="at most 16 stop strings of at most 256 characters") as err:
        asyncio.run(main())
    assert err.value.param == "stop"


def test_stop_string_ends_generation(tiny_model):
    async def main():
        engine = await started_engine(tiny_model)
        _, events = await engine.begin(Request(prompt="x", max_tokens=50, sampling=GREEDY))
        text, _ = await collect(events)
        stop = text[10:13]
        _, events = await engine.begin(Request(prompt="x", max_tokens=50, sampling=GREEDY, stop=(stop,)))
        stopped, done = await collect(events)
        await engine.close()
        return text, stop, stopped, done

    text, stop, stopped, done = asyncio.run(main())
    assert done.reason == "stop"
    assert stopped == text[:text.index(stop)]


def test_queue_is_bounded_and_cancelling_frees_the_model(tiny_model):
    async def main():
        engine = await started_engine(tiny_model, queue_size=1)
        _, running = await engine.begin(Request(prompt="a", max_tokens=400))
        waiting = engine.submit(Request(prompt="b", max_tokens=5))
        with pytest.raises(QueueFull) as full:
            engine.submit(Request(prompt="c", max_tokens=5))
        await anext(running)
        await running.aclose()  # the client went away: generation must stop
        text, done = await collect(engine.events(waiting))
        await engine.close()
        return full.value, done, engine.metrics

    full, done, metrics = asyncio.run(main())
    assert (status_of(full)[0], status_of(full)[2], full.retry_after) == (429, "queue_full", 2)
    assert done.completion_tokens == 5
    assert metrics.tokens_generated < 400 + 5  # the cancelled job stopped early


def test_context_overflow_is_a_clear_client_error(tiny_model):
    async def main():
        engine = await started_engine(tiny_model, context_tokens=64)
        try:
            await engine.begin(Request(prompt="word " * 100, max_tokens=10))
        finally:
            await engine.close()

    with pytest.raises(PromptTooLong) as err:
        asyncio.run(main())
    assert (status_of(err.value)[0], status_of(err.value)[2]) == (400, "context_length_exceeded")
    assert re.fullmatch(r"this model's context is \d+ tokens, but the request needs \d+ "
                        r"\(\d+ in the prompt, 10 to generate\)", err.value.message)


def test_swap_fails_no_queued_or_inflight_request(tiny_model, tmp_path):
    other = shutil.copy(tiny_model, tmp_path / "other-model.gguf")

    async def main():
        engine = await started_engine(tiny_model)
        _, inflight = await engine.begin(Request(prompt="a", max_tokens=300))
        queued = engine.submit(Request(prompt="b", max_tokens=10))
        swap = asyncio.create_task(engine.swap(other))
        results = await asyncio.gather(collect(inflight), collect(engine.events(queued)), swap)
        after = engine.model_id
        await engine.close()
        return results, after

    (first, second, _), after = asyncio.run(main())
    assert (first[1].completion_tokens, second[1].completion_tokens) == (300, 10)
    assert after == "other-model"


def test_a_model_on_its_way_in_counts_as_used(tiny_model, tmp_path):
    """A swap waits for the job in flight; meanwhile its model's file must not be deleted (DELETE /models)."""
    other = shutil.copy(tiny_model, tmp_path / "other-model.gguf")

    async def main():
        engine = await started_engine(tiny_model)
        _, inflight = await engine.begin(Request(prompt="a", max_tokens=300))
        swap = asyncio.create_task(engine.swap(other))
        await asyncio.sleep(0)
        during = engine.uses(other), engine.uses(tiny_model)
        await asyncio.gather(collect(inflight), swap)
        after = engine.uses(other), engine.uses(tiny_model)
        await engine.close()
        return during, after

    assert asyncio.run(main()) == ((True, True), (True, False))


def test_truncating_drops_the_oldest_whole_turns_and_keeps_the_system_message(tiny_model):
    turns = [{"role": "system", "content": "Be brief."}]
    for n in range(20):
        turns += [{"role": "user", "content": f"question {n} " * 8}, {"role": "assistant", "content": "answer " * 8}]
    turns.append({"role": "user", "content": "the last question"})

    async def main():
        engine = await started_engine(tiny_model, context_tokens=256)
        try:
            started, events = await engine.begin(Request(messages=turns, max_tokens=16, truncate=True))
            _, finished = await collect(events)
            with pytest.raises(PromptTooLong):
                await engine.begin(Request(messages=turns, max_tokens=16))
            return started, finished
        finally:
            await engine.close()

    started, finished = asyncio.run(main())
    assert started.dropped > 0 and started.dropped % 2 == 0 and started.prompt_tokens + 16 <= 256
    assert started.dropped_tokens > started.dropped  # each message is several tokens
    assert finished.completion_tokens == 16


def test_truncating_with_no_limit_serves_the_room_left_when_no_turn_can_go(tiny_model):
    """Home Assistant's second call of a turn: its tool results fill most of the context, there is no older
    turn to leave out, and it names no limit: it gets what room there is, as from Ollama, not a 400."""
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "word " * 60}]

    async def main():
        engine = await started_engine(tiny_model, context_tokens=256)
        try:
            started, events = await engine.begin(Request(messages=turns, truncate=True))
            _, finished = await collect(events)
            with pytest.raises(PromptTooLong):  # a limit named is a limit kept
                await engine.begin(Request(messages=turns, max_tokens=200, truncate=True))
            return started, finished
        finally:
            await engine.close()

    started, finished = asyncio.run(main())
    assert started.dropped == 0 and 256 // 4 > 256 - started.prompt_tokens > 0
    assert finished.completion_tokens == 256 - started.prompt_tokens


def test_a_reply_held_to_a_grammar_closes_up_at_the_default_limit(tiny_model):
    """Home Assistant's AI task names no limit.  At inference.max_tokens its JSON is steered to close (a
    generated model would otherwise write its summary until the context is full) and ends whole."""
    schema = {"type": "object", "properties": {"summary": {"type": "string"}, "rain": {"type": "boolean"},
                                               "rooms": {"type": "array", "items": {"type": "string"}}},
              "required": ["summary", "rain", "rooms"], "additionalProperties": False}

    async def main():
        engine = await started_engine(tiny_model, max_tokens=12, context_tokens=1024)
        try:
            held = Request(messages=[{"role": "user", "content": "weather?"}], grammar=from_schema(schema, "format"))
            free = Request(messages=[{"role": "user", "content": "weather?"}])
            return [await collect((await engine.begin(r))[1]) for r in (held, free)]
        finally:
            await engine.close()

    (text, done), (_, free) = asyncio.run(main())
    jsonschema.validate(json.loads(text), schema)
    assert done.reason == "stop" and 12 < done.completion_tokens < 60, text
    assert free.completion_tokens == 12  # free text keeps the default


def test_a_reply_held_to_a_grammar_closes_within_a_limit_the_client_named(tiny_model):
    """Home Assistant's OpenAI integration names 150 tokens: the last quarter of them is kept for closing
    what is open, so the JSON ends whole within the limit (it was cut inside its first string)."""
    schema = {"type": "object", "properties": {"summary": {"type": "string"}, "rain": {"type": "boolean"},
                                               "rooms": {"type": "array", "items": {"type": "string"}}},
              "required": ["summary", "rain", "rooms"], "additionalProperties": False}

    async def main():
        engine = await started_engine(tiny_model, context_tokens=1024)
        try:
            return [await collect((await engine.begin(Request(
                messages=[{"role": "user", "content": "weather?"}], grammar=from_schema(schema, "format"),
                max_tokens=150, sampling=Sampling(seed=seed))))[1]) for seed in range(3)]
        finally:
            await engine.close()

    for text, done in asyncio.run(main()):
        jsonschema.validate(json.loads(text), schema)
        assert done.reason == "stop" and done.completion_tokens <= 150, text


def test_a_turn_dropped_is_a_user_message_and_what_answered_it():
    system, u1, a1, u2, a2, u3 = ({"role": r, "content": str(i)} for i, r in
                                  enumerate(["system", "user", "assistant", "user", "assistant", "user"]))
    assert older_turn_dropped([system, u1, a1, u2, a2, u3]) == [system, u2, a2, u3]
    assert older_turn_dropped([system, u2, a2, u3]) == [system, u3]
    assert older_turn_dropped([system, u3]) is None  # the newest message always stays
    assert older_turn_dropped([a1, u2, a2, u3]) == [u2, a2, u3]  # a history opening with a reply loses that first
    assert older_turn_dropped([a2]) is None
    assert older_turn_dropped(None) is None  # a plain prompt has no turns


def test_failed_swap_keeps_serving_the_old_model(tiny_model, tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 100)

    async def main():
        engine = await started_engine(tiny_model)
        with pytest.raises(Exception, match="could not load"):
            await engine.swap(broken)
        _, events = await engine.begin(Request(prompt="a", max_tokens=3))
        _, done = await collect(events)
        state, model = engine.state, engine.model_id
        await engine.close()
        return state, model, done

    state, model, done = asyncio.run(main())
    assert (state, model, done.completion_tokens) == ("ready", "tiny", 3)


def test_closing_tells_waiting_jobs_the_service_is_going_away(tiny_model):
    async def main():
        engine = await started_engine(tiny_model)
        _, running = await engine.begin(Request(prompt="a", max_tokens=200))
        waiting = engine.submit(Request(prompt="b", max_tokens=5))
        closing = asyncio.create_task(engine.close())
        done = await collect(running)
        with pytest.raises(ServiceError) as err:
            await collect(engine.events(waiting))
        await closing
        return done, err.value

    (_, finished), error = asyncio.run(main())
    assert finished.completion_tokens == 200  # the job in flight completes
    assert isinstance(error, NotReady) and (status_of(error)[0], error.message) == (503, "the service is shutting down")
