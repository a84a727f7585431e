"""The real small model (SmolLM2-135M-Instruct from PyPI) through the real service and the real clients:
a plain chat, a conversation past its context, embeddings and a JSON reply to a schema."""

from __future__ import annotations

import json
import math

import jsonschema
import ollama
import openai
import pytest

from tests.support.served import UNLIMITED, Service

pytestmark = pytest.mark.service
ANSWER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                           "sunny": {"type": "boolean"}},
          "required": ["city", "sunny"], "additionalProperties": False}


@pytest.fixture(scope="module")
def smol(smollm2_model, quantized_variant, tmp_path_factory):
    service = Service(smollm2_model, tmp_path_factory.mktemp("smol"),
                      config=UNLIMITED | {"inference": {"context_tokens": 1024, "cpu_variant": quantized_variant}})
    yield service
    service.stop()


def test_smollm2_chats_past_its_context_embeds_and_answers_in_json(smol):
    client = ollama.Client(host=smol.url, headers={"Authorization": f"Bearer {smol.token}"})
    hello = client.chat(model="paladin", messages=[{"role": "user", "content": "Hello! Who are you?"}],
                        options={"num_predict": 24, "temperature": 0})
    assert hello.done and len(hello.message.content.split()) >= 3  # words, from a 135M model
    assert client.show("paladin").details.quantization_level == "Q4_1"  # Open WebUI shows it in its model list

    history = []
    for n in range(30):
        history += [{"role": "user", "content": f"Note {n}: the boiler was serviced on day {n}. " * 3},
                    {"role": "assistant", "content": "Noted."}]
    past = client.chat(model="paladin", messages=history + [{"role": "user", "content": "Say OK."}],
                       options={"num_predict": 8, "temperature": 0})
    assert past.done and past.prompt_eval_count + 8 <= 1024

    near, far, query = client.embed(model="paladin", input=[
        "The cat sat on the mat.", "Quarterly revenue grew by four percent.", "A kitten is sitting on a rug."
    ]).embeddings
    cosine = lambda a, b: sum(x * y for x, y in zip(a, b))  # noqa: E731 (unit vectors)
    assert len(near) == 576 and abs(math.hypot(*near) - 1) < 1e-6
    assert cosine(query, near) > cosine(query, far)

    sdk = openai.OpenAI(base_url=smol.url + "/v1", api_key=smol.token)
    reply = sdk.chat.completions.create(
        model="paladin", max_tokens=60, temperature=0,
        messages=[{"role": "user", "content": "Which city is the Eiffel Tower in, and is it sunny there today?"}],
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": ANSWER}})
    jsonschema.validate(json.loads(reply.choices[0].message.content), ANSWER)
