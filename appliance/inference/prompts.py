"""Chat messages to a prompt, with the model's own chat template (GGUF `tokenizer.chat_template`)."""

from __future__ import annotations

from datetime import datetime

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

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
        result.append({"role": message["role"], "content": content})
    return result


class ChatTemplate:
    def __init__(self, source: str | None, bos: str = "", eos: str = ""):
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals.update(raise_exception=_raise, strftime_now=lambda fmt: datetime.now().strftime(fmt))
        self.source = source or CHATML
        self._template = env.from_string(self.source)
        self._bos, self._eos = bos, eos

    def render(self, messages: list[dict]) -> str:
        try:
            return self._template.render(messages=messages, add_generation_prompt=True,
                                         bos_token=self._bos, eos_token=self._eos)
        except PromptError:
            raise
        except jinja2.TemplateError as err:
            raise PromptError(f"the model's chat template failed on these messages: {err}") from None

    def stop_strings(self) -> list[str]:
        """End-of-turn markers the template writes; generation stops on them even if the model does not."""
        return [marker for marker in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")
                if marker in self.source]
