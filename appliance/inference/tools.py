"""Tool calls: how each family of chat templates asks for them, the grammar that keeps a call valid, and
how calls are read back out of the model's text.

A model calls a tool by writing it in the format its chat template taught it.  The families here cover
the small models people run: Hermes and Qwen (`<tool_call>{...}</tool_call>`), Llama 3.x (a bare JSON
object with `parameters`) and Mistral (`[TOOL_CALLS][{...}]`).  A model whose template shows it no tools
but which can follow instructions (SmolLM2, Phi-4-mini: the catalog says which) is taught Hermes' format
in its system message: the `generic` family, as llama.cpp's generic format does for such models.

The grammar is made from the tools' own JSON schemas, so a call that is written names a tool that exists
and carries arguments that validate; with tool_choice "auto" it is lazy (the model may answer in words,
and the grammar takes over from the call's opening marker), with "required" or a named tool it holds
from the first token.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from . import grammar
from .grammar import Grammar, SchemaError

MAX_TOOLS = 128
NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True)
class Call:
    name: str
    arguments: dict


@dataclass(frozen=True)
class Cut:
    """A call the token limit cut: its tool, and its arguments as far as they were written (not whole JSON)."""
    name: str
    arguments: str


@dataclass(frozen=True)
class Family:
    name: str
    start: str  # what opens the calls in the model's output: the lazy grammar's trigger
    arguments: str  # the key the family writes the arguments under
    one: str  # GBNF for a single call, given the rule `call` for its JSON object
    many: str  # and for one or more

    def grammar(self, tools: list[dict], required: bool, parallel: bool) -> Grammar:
        """Calls of `tools` only: from the first token if `required`, else from `start` on."""
        one = {"oneOf": [{"type": "object", "properties": {
            "name": {"const": tool["function"]["name"]},
            self.arguments: tool["function"].get("parameters") or {"type": "object"}},
            "required": ["name", self.arguments], "additionalProperties": False} for tool in tools]}
        rules = grammar.rule_text(one, "tools").replace("root ::=", "call ::=", 1)
        return Grammar(f"root ::= {self.many if parallel else self.one}\n{rules}",
                       triggers=() if required else (self.start,))

    def parse(self, text: str) -> tuple[str, list[Call]]:
        """The words before the calls, and the whole calls; all of `text` as words when it holds none (a
        call cut by the token limit, say)."""
        at = text.find(self.start)
        calls = [call for found in self._objects(text[at:])[0] if (call := _call(found, self.arguments))] \
            if at >= 0 else []
        return (text[:at].strip(), calls) if calls else (text, [])

    def cut(self, text: str) -> Cut | None:
        """The call after the whole ones in `text` (held from `start` on), which the token limit cut, once
        its tool's name is whole."""
        rest = self._objects(text)[1]
        opened = re.match(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*(,\s*"' + self.arguments + r'"\s*:\s*)?', rest)
        if not opened:
            return None
        arguments = rest[opened.end():] if opened.group(2) else ""
        try:  # whole, and only what closes the call is missing: the arguments alone
            arguments = arguments[:json.JSONDecoder(strict=False).raw_decode(arguments)[1]]
        except ValueError:
            pass
        return Cut(json.loads(f'"{opened.group(1)}"'), arguments)

    def _objects(self, text: str) -> tuple[list, str]:
        """The JSON objects of the calls in `text` (which begins with `start`), as far as they are whole, and
        what follows the last of them (a call the limit cut)."""
        decoder = json.JSONDecoder(strict=False)  # a model may write a raw newline inside a string
        if self.start == "<tool_call>":
            bodies = re.findall(r"<tool_call>(.*?)</tool_call>", text, re.S)
            last = text.rpartition(self.start)[2]
            bodies.append("" if "</tool_call>" in last else last)
        elif self.name == "mistral":
            bodies = [text.removeprefix(self.start).strip().removeprefix("[")]
        else:
            bodies = [text]
        found = []
        for body in bodies:
            rest = body
            while rest.strip(" ,\n\t") and not rest.lstrip().startswith("]"):  # Mistral's array: one by one
                try:
                    value, end = decoder.raw_decode(rest.lstrip(" ,\n\t"))
                except ValueError:
                    break
                found.append(value)
                rest = rest.lstrip(" ,\n\t")[end:]
        return found, rest.lstrip(" ,\n\t")


def _call(found: object, arguments: str) -> Call | None:
    if not isinstance(found, dict) or not isinstance(found.get("name"), str) or \
            not isinstance(found.get(arguments), dict):
        return None
    return Call(found["name"], found[arguments])


HERMES = Family("hermes", "<tool_call>", "arguments", '"<tool_call>" "\\n"? call "\\n"? "</tool_call>"',
                '("<tool_call>" "\\n"? call "\\n"? "</tool_call>" "\\n"?)+')
# Llama 3.x writes its call as a bare JSON object, `{"name"` or `{ "name"`: the whole reply from its first
# brace on is held until it is known to be a call or not.
LLAMA3 = Family("llama3-json", "{", "parameters", "call", "call")
MISTRAL = Family("mistral", "[TOOL_CALLS]", "arguments", '"[TOOL_CALLS]" "[" call "]"',
                 '"[TOOL_CALLS]" "[" call ("," " "? call)* "]"')
GENERIC = Family("generic", HERMES.start, HERMES.arguments, HERMES.one, HERMES.many)
FAMILIES = {f.name: f for f in (HERMES, LLAMA3, MISTRAL, GENERIC)}  # by the names the catalog's `tools` uses
TEACHING = ("You can call tools. To call one, write <tool_call>{\"name\": <tool name>, \"arguments\": <its "
            "arguments as a JSON object>}</tool_call> and nothing after it. The tools:\n")


def family(template: str, declared: str | None = None) -> Family | None:
    """The tool-call family a model takes: the one its catalog tier `declared` ("none": it takes no tools), else
    the one its chat template teaches, or None when it knows no tools."""
    if declared is not None:
        return FAMILIES.get(declared)
    if "tools" not in template:
        return None
    if "<tool_call>" in template:
        return HERMES
    if "[TOOL_CALLS]" in template:
        return MISTRAL
    if "ipython" in template or '"parameters"' in template:
        return LLAMA3
    if "<|tool|>" in template:  # Phi-4-mini's: tools in a system message field no API fills
        return GENERIC
    return None


def checked(tools: object, where: str = "tools") -> list[dict]:
    """OpenAI-shaped tools ({"type": "function", "function": {"name", "description", "parameters"}}),
    checked, with each schema turned into a grammar once here so a bad one is a clear 400."""
    if not isinstance(tools, list) or not tools or len(tools) > MAX_TOOLS:
        raise SchemaError(f"'{where}' must be a list of 1 to {MAX_TOOLS} tools")
    names = set()
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) and tool.get("type", "function") == "function" \
            else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str) or not NAME.match(name):
            raise SchemaError(f"'{where}[{i}]' must be {{\"type\": \"function\", \"function\": {{\"name\": ...}}}} with "
                              "a name of letters, digits, '_', '.' or '-' (at most 64)")
        if name in names:
            raise SchemaError(f"'{where}[{i}].function.name': {name!r} is given twice")
        names.add(name)
        grammar.rule_text(function.get("parameters") or {"type": "object"}, f"{where}[{i}].function.parameters")
    return tools


@dataclass(frozen=True)
class Offer:
    """What a request's tools come to: the list the chat template is given, the grammar that keeps calls
    valid, and the family that reads them back (all None: no tools, or tool_choice "none"); for the generic
    family, the system message's lesson in its stead (`taught`)."""
    tools: list[dict] | None = None
    grammar: Grammar | None = None
    family: Family | None = None
    taught: str | None = None

    def messages(self, messages: list[dict]) -> list[dict]:
        """The conversation as the model is given it: for the generic family, with the tools taught in the
        system message and the calls and results so far written as text in that format."""
        if self.taught is None:
            return messages
        system = [m for m in messages if m["role"] == "system"][:1]
        written = [_as_text(m) for m in messages if not system or m is not system[0]]
        return [{"role": "system", "content": (system[0]["content"] + "\n\n" if system else "") + self.taught}] \
            + written


def _as_text(message: dict) -> dict:
    """A message of the conversation with its tool calls, or its tool result, written as the generic family
    teaches them."""
    if message.get("tool_calls"):
        calls = "".join("<tool_call>" + json.dumps({"name": call["function"]["name"],
                                                    "arguments": call["function"]["arguments"]}) + "</tool_call>"
                        for call in message["tool_calls"])
        return {"role": "assistant", "content": message["content"] + calls}
    if message["role"] == "tool":
        return {"role": "user", "content": f"<tool_response>\n{message['content']}\n</tool_response>"}
    return message


def offer(template: str, tools: object, choice: object = "auto", parallel: bool = True,
          declared: str | None = None) -> Offer:
    """The tools of a request for the model whose chat template is `template` (and whose catalog tier
    `declared` a tool format, if it is a tier); SchemaError if it cannot take them.  `choice` is OpenAI's
    tool_choice: "auto", "none", "required" or {"function": {"name"}}."""
    if tools is None or tools == [] or choice == "none":
        return Offer()
    tools = checked(tools)
    required = choice == "required"
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name") if isinstance(choice.get("function"), dict) else None
        tools = [t for t in tools if t["function"]["name"] == name]
        if not tools:
            raise SchemaError(f"'tool_choice' names {str(name)[:64]!r}, which is not one of the tools given")
        required = True
    elif choice not in ("auto", "required"):
        raise SchemaError("'tool_choice' is \"auto\", \"none\", \"required\" or {\"type\": \"function\", "
                          "\"function\": {\"name\": ...}}")
    found = family(template, declared)
    if found is None:
        raise SchemaError("this model does not take tools; choose one that does (Qwen, Llama 3.x, SmolLM2 360M or "
                          "larger, Phi-4-mini, Mistral), or send the request without 'tools'")
    if found is GENERIC:
        return Offer(None, found.grammar(tools, required, parallel), found,
                     TEACHING + "\n".join(json.dumps(tool["function"]) for tool in tools))
    return Offer(tools, found.grammar(tools, required, parallel), found)


def opening(text: str, marker: str) -> int:
    """How long the end of `text` is that may be the beginning of `marker`."""
    return next((n for n in range(min(len(marker) - 1, len(text)), 0, -1) if marker.startswith(text[-n:])), 0)


class Splitter:
    """Streams the words before the first call as they come, and holds everything from its opening marker
    on for `Family.parse`; a possible beginning of the marker is held back until it is decided."""

    def __init__(self, start: str):
        self.start, self.held, self.calling = start, "", False

    def feed(self, text: str) -> str:
        self.held += text
        if self.calling:
            return ""
        at = self.held.find(self.start)
        if at >= 0:
            self.calling = True
            words, self.held = self.held[:at], self.held[at:]
            return words
        keep = opening(self.held, self.start)
        words, self.held = self.held[:len(self.held) - keep], self.held[len(self.held) - keep:]
        return words
