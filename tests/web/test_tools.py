"""Tool calls and JSON replies through the real service, with the real `openai` and `ollama` clients as
Home Assistant and Open WebUI call them.  The models are generated, so what they write is noise, but
what the grammar lets through is exact: every call parses and validates against its tool's schema."""

from __future__ import annotations

import json
import shutil

import jsonschema
import ollama
import openai
import pytest

from buildhost import tinymodel
from tests.support.served import UNLIMITED, Service
from appliance.layout import DataDir

pytestmark = pytest.mark.service

# Home Assistant's intents, as its LLM API offers them (shortened): bounded strings, enums, a bounded integer.
TOOLS = [
    {"type": "function", "function": {"name": "HassTurnOn", "description": "Turns on a device or entity", "parameters": {
        "type": "object", "properties": {"name": {"type": "string", "maxLength": 16},
                                         "area": {"type": "string", "enum": ["Kitchen", "Living room"]},
                                         "domain": {"type": "array", "items": {"enum": ["light", "switch"]},
                                                    "maxItems": 2}},
        "required": ["name"], "additionalProperties": False}}},
    {"type": "function", "function": {"name": "HassLightSet", "description": "Sets a light's brightness", "parameters": {
        "type": "object", "properties": {"name": {"type": "string", "maxLength": 16},
                                         "brightness": {"type": "integer", "minimum": 0, "maximum": 100}},
        "required": ["name", "brightness"], "additionalProperties": False}}},
]
# The ollama client keeps only types, enums and descriptions of a schema (no lengths, no ranges): as
# Home Assistant sends them through it, bounded by enums, so that a generated model's calls end.
OLLAMA_TOOLS = [
    {"type": "function", "function": {"name": "HassTurnOn", "description": "Turns on a device or entity", "parameters": {
        "type": "object", "properties": {"name": {"type": "string", "enum": ["Kitchen light", "Hall lamp"]},
                                         "area": {"type": "string", "enum": ["Kitchen", "Living room"]}},
        "required": ["name"]}}},
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
OLLAMA_SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in OLLAMA_TOOLS}
# An AI task's structured answer, as Home Assistant asks for one.
WEATHER = {"type": "object", "properties": {"summary": {"type": "string", "maxLength": 24},
                                            "rain": {"type": "boolean"},
                                            "level": {"type": "integer", "minimum": 1, "maximum": 5}},
           "required": ["summary", "rain", "level"], "additionalProperties": False}
ASK = [{"role": "user", "content": "Turn on the kitchen light"}]


@pytest.fixture(scope="module")
def tool_service(tiny_model, tmp_path_factory):
    """A service whose store holds a generated model per tool-call family, one that always calls (the only
    text it writes is <tool_call>, so the lazy grammar takes over at once) and the plain tiny one."""
    data = tmp_path_factory.mktemp("tools")
    models = DataDir(data).models
    for family in ("hermes", "llama3", "mistral"):
        tinymodel.write(models / f"{family}.gguf", "small", family, template=family)
    tinymodel.write(models / "caller.gguf", "small", "caller", only=("<tool_call>",), template="hermes")
    shutil.copy(tiny_model, models / "tiny.gguf")
    service = Service(None, data, config=UNLIMITED | {"inference": {"model": "tiny.gguf", "max_tokens": 200}})
    yield service.with_sdks()
    service.stop()


def serve(tool_service, model: str) -> None:
    tool_service.choose(model + ".gguf")


def valid(name: str, arguments: dict, schemas: dict = SCHEMAS) -> None:
    jsonschema.validate(arguments, schemas[name])


@pytest.mark.parametrize("family", ["hermes", "llama3", "mistral"])
def test_tool_choice_required_always_yields_valid_calls(tool_service, family):
    serve(tool_service, family)
    for seed in range(5):
        reply = tool_service.openai.chat.completions.create(model="paladin", messages=ASK, tools=TOOLS, tool_choice="required",
                                                   parallel_tool_calls=False, seed=seed, max_tokens=150)
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls" and len(choice.message.tool_calls) == 1
        call = choice.message.tool_calls[0]
        assert call.id.startswith("call_") and call.type == "function"
        valid(call.function.name, json.loads(call.function.arguments))


@pytest.mark.parametrize("family", ["hermes", "mistral"])
def test_a_required_call_the_limit_cuts_never_comes_back_as_markup(tool_service, family):
    """Too few tokens for any call: the reply says it was cut, with no call and none of the call's markup as
    text, in both APIs."""
    serve(tool_service, family)
    for seed in range(3):
        reply = tool_service.openai.chat.completions.create(model="paladin", messages=ASK, tools=TOOLS, tool_choice="required",
                                                   seed=seed, max_tokens=6)
        choice = reply.choices[0]
        assert choice.finish_reason == "length" and not choice.message.tool_calls, choice
        assert not choice.message.content, choice.message.content
    ollama = tool_service.ollama.chat(model="paladin", messages=ASK, tools=TOOLS, options={"num_predict": 6})
    assert ollama.done_reason == "length" and "TOOL_CALLS" not in ollama.message.content \
        and "<tool_call>" not in ollama.message.content


@pytest.mark.parametrize("family", ["hermes", "mistral"])
def test_a_required_call_the_limit_cuts_is_given_as_far_as_it_was_written(tool_service, family):
    """Limits with room for the tool's name but not the whole call: OpenAI's API gives the call as far as
    it was written, in tool_calls under finish_reason "length" (as OpenAI does), never as content;
    Ollama's, whose arguments are an object, says "length" and gives no call."""
    serve(tool_service, family)
    cut = []
    for limit in range(50, 100, 2):
        choice = tool_service.openai.chat.completions.create(
            model="paladin", messages=ASK, tools=TOOLS, tool_choice="required", parallel_tool_calls=False, seed=0,
            max_tokens=limit).choices[0]
        if choice.finish_reason == "length" and choice.message.tool_calls:
            call = choice.message.tool_calls[0]
            assert call.function.name in SCHEMAS and not choice.message.content, choice
            assert call.function.arguments[:1] in ("", "{") and "tool_call" not in call.function.arguments
            ollama = tool_service.ollama.chat(model="paladin", messages=ASK, tools=TOOLS,
                                              options={"num_predict": limit, "seed": 0})
            assert ollama.done_reason == "length" and not ollama.message.tool_calls, ollama
            cut.append(limit)
    assert cut, "no limit cut a call after its tool's name"


def test_a_named_tool_is_the_one_called_and_calls_stream_as_deltas(tool_service):
    serve(tool_service, "hermes")
    stream = tool_service.openai.chat.completions.create(
        model="paladin", messages=ASK, tools=TOOLS, stream=True, max_tokens=150, stream_options={"include_usage": True},
        tool_choice={"type": "function", "function": {"name": "HassLightSet"}}, parallel_tool_calls=False)
    chunks = list(stream)
    deltas = [d for c in chunks if c.choices for d in (c.choices[0].delta.tool_calls or [])]
    assert [d.function.name for d in deltas] == ["HassLightSet"] and deltas[0].index == 0
    valid("HassLightSet", json.loads(deltas[0].function.arguments))
    assert chunks[-2].choices[0].finish_reason == "tool_calls"
    assert not chunks[-1].choices and chunks[-1].usage.completion_tokens > 0


def test_parallel_calls_are_each_whole_and_valid(tool_service):
    """Allowed several calls, the model may write more than one (and a generated one may write until its
    token limit): every call that comes back is whole and valid, one the limit cut does not come back."""
    serve(tool_service, "hermes")
    for seed in range(3):
        reply = tool_service.openai.chat.completions.create(model="paladin", messages=ASK, tools=TOOLS, tool_choice="required",
                                                   max_tokens=150, seed=seed)
        calls = reply.choices[0].message.tool_calls
        assert calls and reply.choices[0].finish_reason == "tool_calls"
        for call in calls:
            valid(call.function.name, json.loads(call.function.arguments))


def test_home_assistants_conversation_turn_call_result_answer(tool_service):
    """Assist sends tools on every turn; the model calls, Home Assistant runs the intent and sends the result
    back as a tool message, and the model answers in words."""
    serve(tool_service, "caller")
    first = tool_service.ollama.chat(model="paladin", messages=ASK, tools=OLLAMA_TOOLS, options={"num_predict": 150})
    call = first.message.tool_calls[0]
    valid(call.function.name, dict(call.function.arguments), OLLAMA_SCHEMAS)
    assert first.done_reason == "stop"
    turn = ASK + [{"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": call.function.name, "arguments": dict(call.function.arguments)}}]},
                  {"role": "tool", "content": json.dumps({"success": [{"name": "Kitchen light"}]})}]
    serve(tool_service, "hermes")  # a model that answers in words when it need not call
    answer = tool_service.ollama.chat(model="paladin", messages=turn, tools=OLLAMA_TOOLS, options={"num_predict": 8})
    assert answer.message.content and not answer.message.tool_calls
    streamed = list(tool_service.openai.chat.completions.create(
        model="paladin", messages=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": None,
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "HassTurnOn",
                                                                              "arguments": '{"name": "lamp"}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "done"}], tools=TOOLS, stream=True, max_tokens=6))
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)


def test_ollama_streams_the_calls_in_one_message(tool_service):
    serve(tool_service, "caller")
    parts = list(tool_service.ollama.chat(model="paladin", messages=ASK, tools=OLLAMA_TOOLS, stream=True,
                                 options={"num_predict": 150}))
    calls = [c for p in parts for c in (p.message.tool_calls or [])]
    assert calls and parts[-1].done
    for call in calls:
        valid(call.function.name, dict(call.function.arguments), OLLAMA_SCHEMAS)
    assert tool_service.ollama.show("paladin").capabilities == ["completion", "tools"]


def test_structured_output_always_parses_and_validates(tool_service):
    serve(tool_service, "tiny")
    for seed in range(3):
        reply = tool_service.openai.chat.completions.create(
            model="paladin", messages=[{"role": "user", "content": "Weather?"}], seed=seed, max_tokens=150,
            response_format={"type": "json_schema", "json_schema": {"name": "weather", "schema": WEATHER}})
        jsonschema.validate(json.loads(reply.choices[0].message.content), WEATHER)
        answer = tool_service.ollama.chat(model="paladin", messages=[{"role": "user", "content": "Weather?"}], format=WEATHER,
                                 options={"num_predict": 150, "seed": seed})
        jsonschema.validate(json.loads(answer.message.content), WEATHER)
        generated = tool_service.ollama.generate(model="paladin", prompt="Weather?", format=WEATHER,
                                        options={"num_predict": 150, "seed": seed})
        jsonschema.validate(json.loads(generated.response), WEATHER)


def test_what_cannot_be_done_is_a_clear_400(tool_service):
    serve(tool_service, "tiny")
    with pytest.raises(openai.BadRequestError) as err:
        tool_service.openai.chat.completions.create(model="paladin", messages=ASK, tools=TOOLS)
    assert "does not take tools" in err.value.body["message"]
    with pytest.raises(ollama.ResponseError) as err:
        tool_service.ollama.chat(model="paladin", messages=ASK, tools=OLLAMA_TOOLS)
    assert err.value.status_code == 400 and "does not take tools" in err.value.error
    assert tool_service.ollama.show("paladin").capabilities == ["completion"]
    serve(tool_service, "hermes")
    for tools, choice, words in (
            (TOOLS, {"type": "function", "function": {"name": "HassNope"}}, "not one of the tools given"),
            ([{"type": "function", "function": {"name": "bad name!"}}], "auto", "a name of letters"),
            (TOOLS + TOOLS[:1], "auto", "given twice"),
            ([{"type": "function", "function": {"name": "f", "parameters": [1]}}], "auto", "must be a JSON schema")):
        with pytest.raises(openai.BadRequestError) as err:
            tool_service.openai.chat.completions.create(model="paladin", messages=ASK, tools=tools, tool_choice=choice)
        assert words in err.value.body["message"]
    with pytest.raises(openai.BadRequestError) as err:
        tool_service.openai.chat.completions.create(model="paladin", messages=ASK, tools=TOOLS,
                                           response_format={"type": "json_object"})
    assert "not both" in err.value.body["message"]
    with tool_service.client() as client:  # what the ollama client would not even send
        for body, words in (({"format": "yaml"}, "'format'"), ({"logprobs": True}, "log probabilities")):
            refused = client.post("/api/chat", json={"model": "paladin", "messages": ASK} | body)
            assert refused.status_code == 400 and words in refused.json()["error"]


def test_the_async_ollama_client_as_home_assistant_uses_it(tool_service):
    """Home Assistant's integration holds an ollama.AsyncClient: setup (list, show, ps, pull), then Assist's
    turn with tools, and an AI task's structured answer."""
    import asyncio

    async def session() -> None:
        client = ollama.AsyncClient(host=tool_service.url, headers={"Authorization": f"Bearer {tool_service.token}"})
        serve(tool_service, "caller")
        names = [m.model for m in (await client.list()).models]
        assert names == ["caller:latest", "paladin:latest"]
        assert "tools" in (await client.show("paladin")).capabilities
        assert [m.model for m in (await client.ps()).models] == ["caller:latest"]
        assert (await client.pull("caller")).status == "success"  # installed: nothing to fetch
        # As homeassistant/components/ollama/entity.py calls it: streamed, keep_alive, num_ctx (a float: its
        # number field's), think.
        turn = await client.chat(model="paladin", messages=ASK, tools=OLLAMA_TOOLS, stream=True, keep_alive=-1,
                                 options={"num_predict": 150, "num_ctx": 8192.0}, think=False, format=None)
        calls = [call async for part in turn for call in part.message.tool_calls or ()]
        assert calls
        for call in calls:
            valid(call.function.name, dict(call.function.arguments), OLLAMA_SCHEMAS)
        with pytest.raises(ollama.ResponseError, match="does not think") as refused:
            await client.chat(model="paladin", messages=ASK, think=True)
        assert refused.value.status_code == 400
        serve(tool_service, "tiny")
        task = await client.chat(model="paladin", messages=[{"role": "user", "content": "Weather?"}], format=WEATHER,
                                 options={"num_predict": 150}, stream=True)
        text = "".join([part.message.content async for part in task])
        jsonschema.validate(json.loads(text), WEATHER)

    asyncio.run(session())
