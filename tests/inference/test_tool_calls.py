"""Tool calls and schemas without a model: reading calls back per family, the stream splitter, and what
a request's tools and schemas may be."""

import asyncio

import pytest

from appliance.inference import grammar, tools
from appliance.inference.generation import Finished, Text
from appliance.catalog import TOOL_FORMATS
from appliance.inference.replies import Calls, Reply, Thought, collect, read, words_and_calls
from appliance.inference.grammar import SchemaError
from appliance.inference.tools import HERMES, LLAMA3, MISTRAL, Call, Cut
from buildhost.tinymodel import TEMPLATES

pytestmark = pytest.mark.unit
LIGHT = [{"type": "function", "function": {"name": "light", "parameters": {
    "type": "object", "properties": {"on": {"type": "boolean"}}, "required": ["on"]}}}]


@pytest.mark.parametrize("family, text, words, calls", [
    (HERMES, 'Sure.\n<tool_call>\n{"name": "light", "arguments": {"on": true}}\n</tool_call>', "Sure.",
     [Call("light", {"on": True})]),
    (HERMES, '<tool_call>{"name": "a", "arguments": {}}</tool_call><tool_call>{"name": "b", "arg', "",
     [Call("a", {})]),  # the second call was cut by the token limit
    (HERMES, "<tool_call>{\"name\": \"a\", \"argu", "<tool_call>{\"name\": \"a\", \"argu", []),
    (LLAMA3, '{ "name": "light", "parameters": {"on": false}}', "", [Call("light", {"on": False})]),
    (LLAMA3, "Use {braces} wisely", "Use {braces} wisely", []),
    (MISTRAL, '[TOOL_CALLS][{"name": "a", "arguments": {"x": "line\nbreak"}}, {"name": "b", "arguments": {}}]', "",
     [Call("a", {"x": "line\nbreak"}), Call("b", {})]),
    (MISTRAL, '[TOOL_CALLS][{"name": "a", "arguments": {}}, {"name": "b", "argum', "", [Call("a", {})]),
    (HERMES, '<tool_call>{"name": 5, "arguments": {}}</tool_call>', '<tool_call>{"name": 5, "arguments": {}}</tool_call>',
     []),
])
def test_calls_are_read_back_whole_or_left_as_words(family, text, words, calls):
    assert family.parse(text) == (words, calls)


def test_the_splitter_streams_words_and_holds_what_may_open_a_call():
    splitter = tools.Splitter("<tool_call>")
    assert [splitter.feed(p) for p in ("Hello <", "to", "day ", "<tool", "_call>{", "...")] == \
        ["Hello ", "", "<today ", "", "", ""]
    assert splitter.calling and splitter.held == "<tool_call>{..."


async def _events(pieces, reason):
    for piece in pieces:
        yield Text(piece)
    yield Finished(reason, 5, len(pieces), 0.1)


async def _read(pieces, reason, offer):
    return [event async for event in words_and_calls(_events(pieces, reason), offer)]


def test_a_replys_events_are_text_then_its_calls_then_its_end_and_collect_into_one_reply():
    offer = tools.offer(TEMPLATES["hermes"], LIGHT)
    done = Finished("stop", 5, 4, 0.1)
    said = ["Sure. <tool", '_call>{"name": "light", ', '"arguments": {"on": true}}', "</tool_call>"]
    events = asyncio.run(_read(said, "stop", offer))
    assert events == [Text("Sure. "), Calls((Call("light", {"on": True}),)), done]
    assert events[1].whole and not events[1].cut
    assert asyncio.run(collect(_events(said, "stop"))) == Reply("".join(said), Calls(), done)  # offered no tools
    cut = asyncio.run(_read(['<tool_call>{"name": "light", "arguments": {"o'], "length", offer))
    assert cut[0] == Calls((Cut("light", '{"o'),)) and cut[0].cut and not cut[0].whole
    assert asyncio.run(_read(["plain"], "stop", tools.Offer())) == [Text("plain"), Finished("stop", 5, 1, 0.1)]


def test_each_template_family_is_recognised_unless_the_catalog_declares_one():
    assert [tools.family(TEMPLATES[name]) for name in ("hermes", "llama3", "mistral", "plain")] == \
        [HERMES, LLAMA3, MISTRAL, None]
    assert [tools.family(TEMPLATES["hermes"], declared) for declared in ("generic", "none", "llama3-json")] == \
        [tools.GENERIC, None, LLAMA3]


def test_every_tool_format_a_catalog_tier_may_declare_is_a_family():
    assert set(TOOL_FORMATS) == set(tools.FAMILIES) | {"none"}


def test_the_generic_family_teaches_its_format_in_the_system_message_and_writes_past_calls_as_text():
    offer = tools.offer(TEMPLATES["plain"], LIGHT, declared="generic")
    assert offer.tools is None and offer.family is tools.GENERIC and offer.grammar.triggers == ("<tool_call>",)
    called = {"role": "assistant", "content": "Sure.", "tool_calls": [
        {"id": "1", "type": "function", "function": {"name": "light", "arguments": {"on": True}}}]}
    given = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Light?"}, called,
             {"role": "tool", "content": "done"}]
    system, user, assistant, result = offer.messages(given)
    assert system["content"].startswith("Be brief.\n\nYou can call tools.") and '{"name": "light"' in system["content"]
    assert assistant == {"role": "assistant",
                         "content": 'Sure.<tool_call>{"name": "light", "arguments": {"on": true}}</tool_call>'}
    assert (user, result) == (given[1], {"role": "user", "content": "<tool_response>\ndone\n</tool_response>"})
    assert offer.messages(given[1:2])[0]["content"].startswith("You can call tools.")
    assert tools.offer(TEMPLATES["hermes"], LIGHT).messages(given) is given


@pytest.mark.parametrize("reply", [
    "<think>\nThe light is off.\n</think>\n\nTurning it on.",
    "  <think>The light is off.</think>Turning it on.",
])
def test_a_thought_comes_apart_from_the_answer_however_the_reply_is_cut_into_pieces(reply):
    for at in range(1, len(reply)):
        for shown in (True, False):
            events = asyncio.run(_read_thinking([reply[:at], reply[at:]], shown))
            thought = "".join(e.text for e in events if isinstance(e, Thought))
            assert thought == ("The light is off." if shown else ""), (at, events)
            assert "".join(e.text for e in events if isinstance(e, Text)) == "Turning it on.", (at, events)
    unclosed = asyncio.run(_read_thinking(["<think>The light", " is"], True))
    assert unclosed == [Thought("The light"), Thought(" is"), Finished("length", 5, 2, 0.1)]
    assert asyncio.run(_read_thinking(["<thin", "king of you"], True))[0] == Text("<thinking of you")


async def _read_thinking(pieces, shown):
    return [event async for event in read(_events(pieces, "length"), tools.Offer(), shown)]


def test_what_a_request_may_offer():
    assert tools.offer(TEMPLATES["hermes"], None) == tools.Offer()
    assert tools.offer(TEMPLATES["hermes"], LIGHT, "none") == tools.Offer()
    auto = tools.offer(TEMPLATES["hermes"], LIGHT)
    assert auto.family is HERMES and auto.grammar.triggers == ("<tool_call>",)
    assert tools.offer(TEMPLATES["hermes"], LIGHT, {"type": "function", "function": {"name": "light"}}).grammar.triggers == ()
    for template, offered, choice, words in (
            (TEMPLATES["plain"], LIGHT, "auto", "does not take tools"),
            (TEMPLATES["hermes"], LIGHT, "always", "'tool_choice' is"),
            (TEMPLATES["hermes"], LIGHT, {"function": {"name": "dark"}}, "not one of the tools"),
            (TEMPLATES["hermes"], "light", "auto", "a list of 1 to 128"),
            (TEMPLATES["hermes"], LIGHT * 2, "auto", "given twice"),
            (TEMPLATES["hermes"], [{"type": "function", "function": {"name": "x y"}}], "auto", "a name of"),
            (TEMPLATES["hermes"], [{"type": "retrieval"}], "auto", "must be {")):
        with pytest.raises(SchemaError, match=words):
            tools.offer(template, offered, choice)


def test_schemas_are_bounded_and_small_integer_ranges_become_enums():
    text = grammar.rule_text({"type": "integer", "minimum": 1, "maximum": 3}, "format")
    assert '"1" | "2" | "3"' in text
    # Home Assistant's `domain` through the ollama client: its anyOf stripped, only the description left.
    text = grammar.rule_text({"type": "object", "properties": {"domain": {"description": "one or a list"},
                                                               "area": {"type": "string"}}}, "tools")
    assert "domain ::= string | number | boolean | domain-3 | array | null" in text
    assert "area-kv ::= " in text and "area ::=" not in text  # an ordinary property is left as it was
    # Home Assistant's device_class: an array of an enum with no maxItems holds each value once at most.
    listed = grammar.rule_text({"type": "array", "items": {"enum": ["tv", "speaker"]}}, "tools")
    assert listed == grammar.rule_text({"type": "array", "items": {"enum": ["tv", "speaker"]}, "maxItems": 2}, "x")
    assert '(item ("," space item)?)?' in listed
    empty = grammar.rule_text({"type": "object", "properties": {}}, "format")  # a map of no schemas, not a schema
    assert empty.startswith('root ::= "{" space  "}" space')
    deep = {"type": "object"}
    for _ in range(20):
        deep = {"type": "array", "items": deep}
    for schema, words in (([1], "must be a JSON schema"), (deep, "nests deeper"),
                          ({"enum": ["x" * 70_000]}, "at most 65536"), ({"$ref": "#/nowhere"}, "cannot be turned")):
        with pytest.raises(SchemaError, match=words):
            grammar.rule_text(schema, "format")
