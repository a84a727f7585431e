"""The APIs' request bodies as declared (appliance/web/bodies.py): parsed in one pass into frozen objects with
the 400s the routes have always given, and docs/api.md's field tables generated from the same tables.

`.venv/bin/python -m tests.web.test_bodies` rewrites those tables after a declaration changes."""

from __future__ import annotations

import dataclasses

import pytest

from appliance.errors import InvalidRequest
from appliance.web import bodies
from appliance.web.http import parse
from buildhost import ROOT
from tests.support.generated import Generated

FIELDS = Generated(ROOT / "docs/api.md", "<!-- generated from appliance/web/bodies.py",
                   "<!-- end of the generated fields -->")


@pytest.mark.unit
def test_docs_list_every_declared_field():
    assert FIELDS.read() == bodies.reference() + "\n", "docs/api.md's request fields are stale: run " \
                                                       "`.venv/bin/python -m tests.web.test_bodies`"


@pytest.mark.unit
def test_a_minimal_body_takes_every_default():
    chat = parse(bodies.ChatCompletion, {"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert dataclasses.is_dataclass(chat) and (chat.stream, chat.stop, chat.limit, chat.tool_choice) == \
        (False, (), None, "auto")
    assert (chat.sampling.temperature, chat.sampling.top_p, chat.sampling.top_k) == (1.0, 1.0, 40)
    with pytest.raises(dataclasses.FrozenInstanceError):
        chat.model = "other"
    ollama = parse(bodies.OllamaChat, {"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                       "options": {"num_predict": -1, "stop": ["\n"]}})
    assert (ollama.stream, ollama.options.limit, ollama.options.stop, ollama.options.sampling.temperature) == \
        (True, None, ("\n",), 0.8)
    assert parse(bodies.OllamaEmbed, {"model": "m", "input": "one"}).input == ("one",)


@pytest.mark.unit
@pytest.mark.parametrize("cls, body, param, message", [
    (bodies.Completion, {"prompt": "x"}, "model", "'model' is required"),
    (bodies.Completion, {"model": "m", "prompt": 3}, "prompt", "'prompt' must be a string, got 3"),
    (bodies.Completion, {"model": "m", "prompt": "x", "temperature": 3}, "temperature",
     "'temperature' must be between 0 and 2, got 3.0"),
    (bodies.Completion, {"model": "m", "prompt": "x", "max_tokens": 0}, "max_tokens", "'max_tokens' must be at least 1"),
    (bodies.Completion, {"model": "m", "prompt": "x", "top_k": 1.5}, "top_k", "'top_k' must be an integer, got 1.5"),
    (bodies.Completion, {"model": "m", "prompt": "x", "stop": ["a"] * 5}, "stop", "up to 4 strings"),
    (bodies.Completion, {"model": "m", "prompt": "x", "n": 2}, "n", "only n=1 is supported"),
    (bodies.Completion, {"model": "m", "prompt": "x", "top_logprobs": 2}, "logprobs", "log probabilities"),
    (bodies.ChatCompletion, {"model": "m", "messages": []}, "messages", "non-empty array of messages"),
    (bodies.ChatCompletion, {"model": "m", "messages": [{"role": "user"}], "response_format": {"type": "xml"}},
     "response_format", "text, json_object or json_schema"),
    (bodies.Embeddings, {"model": "m", "input": []}, "input", "a list of 1 to 64 strings"),
    (bodies.Embeddings, {"model": "m", "input": "x", "dimensions": 8}, "dimensions", "cannot be chosen"),
    (bodies.OllamaChat, {"model": "m", "messages": [{"role": "user"}], "options": {"temperature": "hot"}},
     "options.temperature", "'options.temperature' must be a number, got \"hot\""),
    (bodies.OllamaChat, {"model": "m", "messages": [{"role": "user"}], "options": []}, "options",
     "'options' must be an object"),
    (bodies.OllamaChat, {"model": "m", "messages": [{"role": "user"}], "think": "hard"}, "think",
     "'think' must be true, false"),
    (bodies.ChatCompletion, {"model": "m", "messages": [{"role": "user"}], "reasoning_effort": 2}, "reasoning_effort",
     "'reasoning_effort' must be"),
    (bodies.OllamaGenerate, {"model": "m", "images": ["x"]}, "images", "read text only"),
    (bodies.OllamaGenerate, {"model": "m", "keep_alive": []}, "keep_alive", "a duration"),
    (bodies.OllamaGenerate, {"model": "m", "format": 3}, "format", "a JSON schema"),
])
def test_a_wrong_field_is_a_400_naming_it(cls, body, param, message):
    with pytest.raises(InvalidRequest) as refused:
        parse(cls, body)
    assert refused.value.param == param and message in refused.value.message


if __name__ == "__main__":
    FIELDS.write(bodies.reference())
