"""Chat messages to a prompt, with the model's own chat template (GGUF `tokenizer.chat_template`), cut to
fit the context by whole turns."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Callable

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..errors import InvalidRequest, PromptTooLong
from .generation import Request

# ChatML: what llama.cpp falls back to as well when a model carries no template.
CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
ROLES = ("system", "user", "assistant", "tool")


class PromptError(ValueError):
    """The messages cannot be turned into a prompt (the template rejected them)."""


def _raise(message: str) -> None:
    raise PromptError(message)


def messages(raw: object, param: str = "messages") -> list[dict]:
    """Validated chat messages; content given as OpenAI text parts is joined."""
    if not isinstance(raw, list) or not raw:
        raise PromptError(f"'{param}' must be a non-empty array of messages")
    result = []
    for i, message in enumerate(raw):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise PromptError(f"'{param}[{i}]' must be an object with a role of {', '.join(ROLES)}")
        if message.get("images"):  # Ollama's way of attaching pictures
            raise PromptError(f"'{param}[{i}].images': the models on this box read text only; send the message "
                              "without images")
        content = message.get("content") or ""
        if isinstance(content, list):
            for j, part in enumerate(content):
                kind = part.get("type") if isinstance(part, dict) else None
                if kind != "text":
                    raise PromptError(f"'{param}[{i}].content[{j}]': a part of type {str(kind)[:40]!r} is not "
                                      "supported; the models on this box read text parts only")
            content = "".join(str(p.get("text", "")) for p in content)
        if not isinstance(content, str):
            raise PromptError(f"'{param}[{i}].content' must be a string")
        result.append({"role": message["role"], "content": content} | _tool_fields(message, f"{param}[{i}]"))
    return result


def _tool_fields(message: dict, where: str) -> dict:
    """An assistant's tool calls and a tool result's id and name, in the shape chat templates read
    (OpenAI's, with the arguments as an object: Hugging Face templates write them with `tojson`)."""
    fields = {}
    if message.get("tool_calls"):
        calls = message["tool_calls"]
        if message["role"] != "assistant" or not isinstance(calls, list):
            raise PromptError(f"'{where}.tool_calls' is a list, on an assistant's message only")
        fields["tool_calls"] = [_call(call, f"{where}.tool_calls[{j}]") for j, call in enumerate(calls)]
    for key in ("tool_call_id", "name"):
        if isinstance(message.get(key), str):
            fields[key] = message[key][:256]
    return fields


def _call(call: object, where: str) -> dict:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise PromptError(f"'{where}' must be {{\"function\": {{\"name\", \"arguments\"}}}}")
    arguments = function.get("arguments") or {}
    if isinstance(arguments, str):  # OpenAI sends them as a JSON string
        try:
            arguments = json.loads(arguments)
        except ValueError:
            raise PromptError(f"'{where}.function.arguments' is not JSON") from None
    if not isinstance(arguments, dict):
        raise PromptError(f"'{where}.function.arguments' must be an object")
    return {"id": str(call.get("id", ""))[:64], "type": "function",
            "function": {"name": function["name"][:64], "arguments": arguments}}


def thinks(template: str) -> bool:
    """Whether a chat template lets its model think before it answers, on request (Qwen 3's)."""
    return "enable_thinking" in template


class ChatTemplate:
    def __init__(self, source: str | None, bos: str = "", eos: str = ""):
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals.update(raise_exception=_raise, strftime_now=lambda fmt: datetime.now().strftime(fmt))
        self.source = source or CHATML
        self._template = env.from_string(self.source)
        self._bos, self._eos = bos, eos

    def render(self, messages: list[dict], tools: list[dict] | None = None, think: bool = False) -> str:
        try:
            # enable_thinking: Qwen 3's template thinks aloud unless told not to.
            return self._template.render(messages=messages, tools=tools, add_generation_prompt=True,
                                         bos_token=self._bos, eos_token=self._eos, enable_thinking=think)
        except PromptError:
            raise
        except jinja2.TemplateError as err:
            raise PromptError(f"the model's chat template failed on these messages: {err}") from None

    def stop_strings(self) -> list[str]:
        """End-of-turn markers the template writes; generation stops on them even if the model does not."""
        return [marker for marker in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")
                if marker in self.source]


def older_turn_dropped(messages: list[dict] | None) -> list[dict] | None:
    """`messages` without their oldest turn (a user message and what answered it), system messages kept;
    None when only the last user message is left.  Whole turns go, because many chat templates refuse a
    conversation that does not start with the user."""
    if not messages:
        return None
    system = [m for m in messages if m["role"] == "system"]
    rest = [m for m in messages if m["role"] != "system"]
    users = [i for i, m in enumerate(rest) if m["role"] == "user"]
    if not users or (users[0] == 0 and len(users) < 2):
        return None
    return system + rest[users[0] if users[0] > 0 else users[1]:]


def fitted(template: ChatTemplate, tokenize: Callable[[str], list[int]], request: Request, n_ctx: int,
           reserve: int) -> tuple[list[int], int, int]:
    """The prompt's tokens, and how many of the oldest messages (and their tokens) were left out so that
    they and `reserve` tokens of reply fit `n_ctx` (only if the request lets them go: `truncate`)."""
    messages, dropped, whole = request.messages, 0, None
    while True:
        try:
            text = template.render(messages, request.tools, request.think) if messages is not None else request.prompt
        except PromptError as err:
            raise InvalidRequest(str(err), param="messages") from None
        tokens = tokenize(text)
        whole = whole or len(tokens)
        too_long = request.truncate and len(tokens) + reserve > n_ctx
        shorter = older_turn_dropped(messages) if too_long else None
        if shorter is None:
            break
        dropped += len(messages) - len(shorter)
        messages = shorter
    needed = request.max_tokens or 1
    if len(tokens) + needed > n_ctx:
        raise PromptTooLong(f"this model's context is {n_ctx} tokens, but the request needs "
                            f"{len(tokens) + needed} ({len(tokens)} in the prompt, {needed} to generate)"
                            + (" with only the newest message left" if dropped else ""),
                            param="messages" if request.messages else "prompt")
    return tokens, dropped, whole - len(tokens)
