"""Constrained generation: llama.cpp grammars (GBNF) made from JSON schemas.

A grammar restricts which tokens the sampler may pick, so output that must be JSON is JSON and output
that must match a schema matches it, whatever the model would rather write.  The conversion is
llama-cpp-python's port of llama.cpp's `json_schema_to_grammar`; it enforces types, required and
optional properties, enums and constants, string and array lengths, but not numeric ranges, so a bounded
integer (up to MAX_ENUM values) is turned into the enum of its values first, and an array of an enum
holds each value once at most, so that a small model's call ends.  A grammar is either
active from the first token or lazy: free text until one of its triggers appears, the grammar from the
trigger on (a tool call after a few words of the model's own).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from llama_cpp import llama_grammar

MAX_SCHEMA_BYTES = 64 * 1024  # Home Assistant's largest tool list is a few kilobytes
MAX_DEPTH = 16
MAX_ENUM = 256


class SchemaError(ValueError):
    """A JSON schema this box cannot turn into a grammar; the message says which part and why."""


@dataclass(frozen=True)
class Grammar:
    text: str
    root: str = "root"
    triggers: tuple[str, ...] = ()  # lazy: off until one of these words appears in the output


ANY_JSON = Grammar(llama_grammar.JSON_GBNF)


def from_schema(schema: object, where: str) -> Grammar:
    """The grammar of JSON that validates against `schema`; `where` names the request field in errors."""
    return Grammar(rule_text(schema, where))


def rule_text(schema: object, where: str) -> str:
    """`schema` as GBNF rules with the root rule `root`."""
    if not isinstance(schema, dict):
        raise SchemaError(f"'{where}' must be a JSON schema (an object)")
    try:
        text = json.dumps(_bounded(schema, where, 0))
    except (TypeError, ValueError) as err:
        raise SchemaError(f"'{where}' is not plain JSON: {err}") from None
    if len(text) > MAX_SCHEMA_BYTES:
        raise SchemaError(f"'{where}' is {len(text)} bytes of JSON schema; at most {MAX_SCHEMA_BYTES}")
    try:
        return llama_grammar.json_schema_to_gbnf(text)
    except Exception as err:  # the port raises whatever it meets: KeyError, ValueError, NotImplementedError
        raise SchemaError(f"'{where}' cannot be turned into a grammar: {type(err).__name__}: {err}") from None


# Keywords that say nothing about which values are valid: a schema of only these accepts any value.
ANNOTATIONS = frozenset({"description", "title", "default", "examples", "$comment", "deprecated"})
ANY_VALUE = {"type": ["string", "number", "boolean", "object", "array", "null"]}
# Where a schema holds schemas: one or a list of them, or a map of names to them.
SUBSCHEMAS = ("items", "additionalProperties", "not", "anyOf", "oneOf", "allOf", "prefixItems")
MAPS = ("properties", "$defs", "definitions")


def _bounded(schema: object, where: str, depth: int) -> object:
    """`schema` checked for depth, with small integer ranges spelled out as enums (the converter ignores
    minimum and maximum), arrays of an enum bounded by the enum's size, and schemas of only annotations made
    explicit as any value, which the converter refuses to guess (the `ollama` client strips a tool
    parameter's `anyOf` and leaves its description: Home Assistant's `domain`)."""
    if depth > MAX_DEPTH:
        raise SchemaError(f"'{where}' nests deeper than {MAX_DEPTH} levels")
    if isinstance(schema, list):  # anyOf and the like, or `items` in the old tuple form
        return [_bounded(item, where, depth + 1) for item in schema]
    if not isinstance(schema, dict):
        return schema  # true/false, or something the converter will refuse by name
    if schema.keys() <= ANNOTATIONS:
        return ANY_VALUE
    low, high = schema.get("minimum"), schema.get("maximum")
    if schema.get("type") == "integer" and isinstance(low, int) and isinstance(high, int) and \
            0 <= high - low < MAX_ENUM:
        return {"enum": list(range(low, high + 1))}
    out = dict(schema)
    items = out.get("items")
    if out.get("type") == "array" and "maxItems" not in out and isinstance(items, dict) and \
            isinstance(items.get("enum"), list):
        # Each value once at most: every set of choices still fits, and a small model that would list the
        # enum over and over (Home Assistant's device_class) ends its call.
        out["maxItems"] = len(items["enum"])
    for key in SUBSCHEMAS:
        if key in out:
            out[key] = _bounded(out[key], where, depth + 1)
    for key in MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {name: _bounded(item, where, depth + 1) for name, item in out[key].items()}
    return out
