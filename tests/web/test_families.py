"""Each family of the catalog with its real chat template (tests/templates: the text its GGUF carries) on a
generated model that writes a script (buildhost/tinymodel.py): its words, its thinking, its tool call in its
own markers and its end-of-turn marker, then more.  Through the real service and the real `openai` and
`ollama` clients: what comes back is exactly the words, the thought and the call, in their own fields, and
nothing of the template."""

from __future__ import annotations

import json
from pathlib import Path

import ollama
import openai
import pytest
import yaml

from buildhost import tinymodel
from tests.support.catalog import tier_entry
from tests.support.served import UNLIMITED, Service
from appliance.layout import DataDir

pytestmark = pytest.mark.service

TEMPLATES = Path(__file__).parents[1] / "templates"
TOOLS = [{"type": "function", "function": {
    "name": "HassTurnOn", "description": "Turns on a device or entity",
    "parameters": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}}}]
ASK = [{"role": "system", "content": "You control the home."}, {"role": "user", "content": "Turn on the kitchen"}]
WORDS, THOUGHT, ARGUMENTS = "Sure, on it.", "The kitchen light is off.", {"name": "kitchen"}
CALL = json.dumps({"name": "HassTurnOn", "arguments": ARGUMENTS})
ANSWER = ("Sure,", " on it.")
# What each family's model writes.  After its end-of-turn marker comes LEAK: a reply that shows it (or the
# marker) went past the end of its turn.
SCRIPTS = {
    "qwen2.5": ANSWER + ("<tool_call>", CALL, "</tool_call>", "<|im_end|>", "LEAK"),
    "qwen3": ("<think>", "\nThe kitchen", " light is off.\n", "</think>", "\n\nSure,", " on it.", "<tool_call>", CALL,
              "</tool_call>", "<|im_end|>", "LEAK"),
    "llama3.2": ANSWER + (json.dumps({"name": "HassTurnOn", "parameters": ARGUMENTS}), "<|eot_id|>", "LEAK"),
    "phi4-mini": ANSWER + ("<tool_call>", CALL, "</tool_call>", "<|end|>", "LEAK"),
    "smollm2": ANSWER + ("<tool_call>", CALL, "</tool_call>", "<|im_end|>", "LEAK"),
    "gemma3": ANSWER + ("<end_of_turn>", "LEAK", '{"answer": "on"}'),
}
MARKUP = ("LEAK", "<|im_end|>", "<|im_start|>", "<|eot_id|>", "<|start_header_id|>", "<|end|>", "<|assistant|>",
          "<end_of_turn>", "<start_of_turn>", "<think>", "</think>")
TOOL_FAMILIES = ["qwen2.5", "qwen3", "llama3.2", "phi4-mini", "smollm2"]


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    """A service whose store holds each family's scripted model; SmolLM2 is installed as the catalog's tier,
    which says it takes tools in the generic format (its template shows it none)."""
    data = tmp_path_factory.mktemp("families")
    models = DataDir(data).models
    for family, script in SCRIPTS.items():
        tinymodel.write(models / f"{family}.gguf", "small", family, template=(TEMPLATES / f"{family}.jinja").read_text(),
                        script=script)
    smollm2 = models / "smollm2.gguf"
    catalog = data / "catalog.yaml"
    catalog.write_text(yaml.safe_dump({"latest": {}, "tiers": [tier_entry(
        "smollm2-360m", "http://127.0.0.1:9/smollm2.gguf", smollm2.stat().st_size, "0" * 64, file=smollm2.name,
        tools="generic")]}))
    service = Service(None, data, system={"paths": {"catalog": str(catalog)}},
                      config=UNLIMITED | {"inference": {"model": "gemma3.gguf", "max_tokens": 60}})
    yield service.with_sdks()
    service.stop()


def serve(families, family: str) -> None:
    families.choose(family + ".gguf")


def clean(text: str | None) -> bool:
    return not any(marker in (text or "") for marker in MARKUP)


@pytest.mark.parametrize("family", TOOL_FAMILIES)
def test_a_familys_tool_call_comes_back_as_a_call_after_its_words_in_both_apis(families, family):
    serve(families, family)
    choice = families.openai.chat.completions.create(model="paladin", messages=ASK, tools=TOOLS).choices[0]
    assert (choice.finish_reason, choice.message.content) == ("tool_calls", WORDS), choice
    assert [(c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls] == \
        [("HassTurnOn", ARGUMENTS)]
    for streamed in (False, True):
        replies = families.ollama.chat(model="paladin", messages=ASK, tools=TOOLS, stream=streamed)
        replies = list(replies) if streamed else [replies]
        assert "".join(r.message.content for r in replies) == WORDS
        assert [(c.function.name, dict(c.function.arguments)) for r in replies for c in r.message.tool_calls or ()] == \
            [("HassTurnOn", ARGUMENTS)]
    # The call and its result, given back, go through the family's template (in its own form, or as text).
    history = ASK + [{"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "HassTurnOn", "arguments": json.dumps(ARGUMENTS)}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"success": true}'}]
    again = families.openai.chat.completions.create(model="paladin", messages=history, tools=TOOLS).choices[0]
    assert again.finish_reason == "tool_calls" and again.message.content == WORDS


@pytest.mark.parametrize("family", list(SCRIPTS))
def test_no_template_marker_leaks_into_a_reply_and_json_is_json(families, family):
    serve(families, family)
    text = families.openai.chat.completions.create(model="paladin", messages=ASK).choices[0].message.content
    streamed = "".join(r.message.content for r in families.ollama.chat(model="paladin", messages=ASK, stream=True))
    assert text.startswith(WORDS) and streamed == text and clean(text), text
    # Held to JSON from the first token, the model writes the one JSON object its script has: a thinking model
    # does not think first, and no marker comes before or after.
    expected = json.loads(next(piece for piece in SCRIPTS[family] if piece.startswith("{")))
    answer = families.openai.chat.completions.create(model="paladin", messages=ASK,
                                                     response_format={"type": "json_object"}).choices[0]
    assert json.loads(answer.message.content) == expected and not answer.message.model_extra.get("reasoning_content")
    assert json.loads(families.ollama.chat(model="paladin", messages=ASK, format="json", think=False).message.content) \
        == expected


def test_gemma_takes_no_tools_and_says_so_in_both_apis(families):
    serve(families, "gemma3")
    with pytest.raises(openai.BadRequestError) as refused:
        families.openai.chat.completions.create(model="paladin", messages=ASK, tools=TOOLS)
    assert refused.value.body["param"] == "tools" and "does not take tools" in refused.value.body["message"]
    with pytest.raises(ollama.ResponseError) as refused:
        families.ollama.chat(model="paladin", messages=ASK, tools=TOOLS)
    assert refused.value.status_code == 400 and "does not take tools" in refused.value.error
    shown = families.ollama.show("paladin")
    assert shown.capabilities == ["completion"]


def test_qwen3_thinks_only_when_asked_and_its_thought_comes_apart_from_the_answer(families):
    serve(families, "qwen3")
    assert set(families.ollama.show("paladin").capabilities) == {"completion", "tools", "thinking"}
    thought = families.ollama.chat(model="paladin", messages=ASK, tools=TOOLS, think=True).message
    assert (thought.thinking, thought.content, len(thought.tool_calls)) == (THOUGHT, WORDS, 1)
    # Home Assistant sends think: false; Ollama's clients that say nothing get no thinking either.
    for think in (False, None):
        plain = families.ollama.chat(model="paladin", messages=ASK, tools=TOOLS, think=think).message
        assert (plain.thinking, plain.content, len(plain.tool_calls)) == (None, WORDS, 1)
    pieces = list(families.ollama.chat(model="paladin", messages=ASK, tools=TOOLS, think=True, stream=True))
    assert "".join(p.message.thinking or "" for p in pieces) == THOUGHT
    assert "".join(p.message.content for p in pieces) == WORDS
    generated = families.ollama.generate(model="paladin", prompt="Is the light off?", think=True)
    assert generated.thinking == THOUGHT and generated.response.startswith(WORDS) and clean(generated.response)

    message = families.openai.chat.completions.create(model="paladin", messages=ASK, tools=TOOLS,
                                                      reasoning_effort="low").choices[0].message
    assert (message.model_extra["reasoning_content"], message.content) == (THOUGHT, WORDS)
    message = families.openai.chat.completions.create(model="paladin", messages=ASK).choices[0].message
    assert "reasoning_content" not in message.model_extra and message.content.startswith(WORDS)
    chunks = list(families.openai.chat.completions.create(model="paladin", messages=ASK, tools=TOOLS,
                                                          reasoning_effort="high", stream=True))
    deltas = [chunk.choices[0].delta for chunk in chunks if chunk.choices]
    assert "".join(d.model_extra.get("reasoning_content") or "" for d in deltas) == THOUGHT
    assert "".join(d.content or "" for d in deltas) == WORDS


def test_a_model_that_cannot_think_refuses_to_in_both_apis(families):
    serve(families, "llama3.2")
    with pytest.raises(ollama.ResponseError) as refused:
        families.ollama.chat(model="paladin", messages=ASK, think=True)
    assert refused.value.status_code == 400 and "does not think" in refused.value.error
    with pytest.raises(openai.BadRequestError) as refused:
        families.openai.chat.completions.create(model="paladin", messages=ASK, reasoning_effort="medium")
    assert refused.value.body["param"] == "reasoning_effort"
    assert families.ollama.chat(model="paladin", messages=ASK, think=False).message.content.startswith(WORDS)
