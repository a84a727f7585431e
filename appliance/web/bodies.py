"""The APIs' request bodies, declared as data: one frozen table per body (config/schema.py's `setting`: type,
bounds, default, help, and how a structured value is read), parsed in one pass by http.parse into the object
a route works with, and the source of docs/api.md's field tables (`reference`).  Fields a body does not
declare are ignored, as OpenAI and Ollama ignore them.

Kept as one concept: the one table of every body the box accepts, as mkosi keeps its settings in one
table; split by API, the shared fields (sampling, messages) and the docs' one reference would scatter."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .. import conversations
from ..config.schema import reference_rows, section, setting
from ..errors import InvalidRequest
from ..inference import prompts
from ..inference.generation import Sampling
from ..inference.grammar import Grammar
from . import constrained

MAX_STOPS = 4  # OpenAI's limit; the engine bounds every API's stop strings again
MAX_INPUTS = 64  # texts in one embedding request


def _as_given(raw: object) -> object:
    return raw


def _refused(why: str, param: str):
    """A field this box cannot honour: refused with `why` unless it is absent, null, false or zero."""
    def read(raw: object) -> None:
        if raw not in (None, False, 0):
            raise InvalidRequest(why, param=param)
    return read


def _think(raw: object) -> bool:
    """Ollama's `think`: true or false, or a level (gpt-oss's), which turns it on."""
    if raw is None or isinstance(raw, bool):
        return bool(raw)
    if raw in ("low", "medium", "high"):
        return True
    raise ValueError("'think' must be true, false, \"low\", \"medium\" or \"high\"")


def _effort(raw: object) -> bool:
    """OpenAI's `reasoning_effort`: any effort but none or minimal turns a thinking model's thinking on."""
    if raw is None or raw in ("none", "minimal"):
        return False
    if raw in ("low", "medium", "high"):
        return True
    raise ValueError("'reasoning_effort' must be \"none\", \"minimal\", \"low\", \"medium\" or \"high\"")


LOGPROBS = ("log probabilities are not returned by this box; send the request without 'logprobs' and "
            "'top_logprobs'")


def _stops(raw: object) -> tuple[str, ...]:
    stops = [raw] if isinstance(raw, str) else [] if raw is None else raw
    if not isinstance(stops, list) or len(stops) > MAX_STOPS or not all(isinstance(s, str) for s in stops):
        raise ValueError(f"'stop' must be a string or an array of up to {MAX_STOPS} strings")
    return tuple(stops)


def _option_stops(raw: object) -> tuple[str, ...]:
    if raw is not None and (not isinstance(raw, list) or not all(isinstance(s, str) for s in raw)):
        raise ValueError("'options.stop' must be an array of strings")
    return tuple(raw or ())


def _one(raw: object) -> int:
    if raw not in (None, 1):
        raise ValueError("only n=1 is supported")
    return 1


def _response_format(raw: object) -> Grammar | None:
    if raw is not None and not isinstance(raw, dict):
        raise ValueError("'response_format' must be an object")
    kind = raw.get("type") if raw else "text"
    if kind == "text":
        return None
    if kind == "json_object":
        return constrained.json_output(None, "response_format")
    if kind == "json_schema":
        spec = raw.get("json_schema")
        return constrained.json_output(spec.get("schema") if isinstance(spec, dict) else None,
                                       "response_format.json_schema.schema")
    raise ValueError("'response_format.type' is text, json_object or json_schema")


def _format(raw: object) -> Grammar | None:
    """Ollama's `format`: "json", or a JSON schema the reply must validate against."""
    if raw in (None, ""):
        return None
    if raw == "json":
        return constrained.json_output(None, "format")
    if isinstance(raw, dict):
        return constrained.json_output(raw, "format")
    raise ValueError("'format' is \"json\" or a JSON schema (an object)")


def _texts(raw: object) -> tuple[str, ...]:
    texts = [raw] if isinstance(raw, str) else raw
    if not isinstance(texts, list) or not 0 < len(texts) <= MAX_INPUTS or \
            not all(isinstance(t, str) for t in texts):
        raise ValueError(f"'input' is a string or a list of 1 to {MAX_INPUTS} strings (text only: "
                         "token ids are not taken)")
    return tuple(texts)


def _encoding(raw: object) -> str:
    if raw not in (None, "float", "base64"):
        raise ValueError("'encoding_format' is float or base64")
    return raw or "float"


def _duration(raw: object) -> object:
    if raw is not None and not isinstance(raw, (str, int, float)):
        raise ValueError("'keep_alive' is a duration such as \"5m\" or a number of seconds")
    return raw


def _model_field() -> str:
    return setting(None, "The model's name: its id, or `paladin` for whichever the box serves.", required=True)


def _input_field() -> tuple[str, ...]:
    return setting((), "The text to embed, or a list of texts.", required=True, read=_texts,
                   shape="string or array", allowed=f"1 to {MAX_INPUTS} strings")


def _messages_field() -> list[dict]:
    return setting(None, "The conversation: `role` (system, user, assistant, tool), `content` (text, or OpenAI's "
                         "text parts), an assistant's `tool_calls`, a tool result's `tool_call_id`.",
                   required=True, read=prompts.messages, shape="array", allowed="at least one message")


def _format_field() -> Grammar | None:
    return setting(None, "Hold the reply to JSON (`\"json\"`) or to a JSON schema.", read=_format,
                   shape="string or object")


def _logprobs_field() -> None:
    return setting(None, "Refused: this box computes no log probabilities.", read=_refused(LOGPROBS, "logprobs"),
                   shape="any", allowed="absent, null, false or 0")


@dataclass(frozen=True, kw_only=True)
class Sampled:
    """What OpenAI's chat and text completions share."""
    model: str = _model_field()
    stream: bool = setting(False, "Stream the reply as server-sent events, ending in `data: [DONE]`.")
    stream_options: dict | None = setting(None, "`include_usage`: a last chunk with the token counts.")
    max_completion_tokens: int | None = setting(None, "Most tokens to generate (null: up to the context).",
                                                minimum=1)
    max_tokens: int | None = setting(None, "The older name of `max_completion_tokens`.", minimum=1)
    temperature: float = setting(1.0, "Randomness; 0 is greedy.", minimum=0, maximum=2)
    top_p: float = setting(1.0, "Nucleus sampling.", minimum=0, maximum=1)
    top_k: int = setting(40, "Sample from the k likeliest tokens; 0: all.", minimum=0)
    seed: int | None = setting(None, "The same seed and request give the same reply.")
    stop: tuple[str, ...] = setting((), "Where the reply ends (the stop string is not returned).", read=_stops,
                                    shape="string or array", allowed=f"up to {MAX_STOPS} strings")
    n: int = setting(1, "Replies to generate.", read=_one, shape="integer", allowed="1")
    logprobs: None = _logprobs_field()
    top_logprobs: None = _logprobs_field()
    ignore_eos: bool = setting(False, "llama-server's: generate exactly `max_tokens`, past the end of the reply.")
    response_format: Grammar | None = setting(None, "`{\"type\": \"json_object\"}`, or `{\"type\": \"json_schema\", "
                                                     "\"json_schema\": {\"schema\"}}`: the reply is held to JSON or "
                                                     "to the schema by a grammar.", read=_response_format,
                                               shape="object")

    @property
    def sampling(self) -> Sampling:
        return Sampling(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, seed=self.seed)

    @property
    def limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


@dataclass(frozen=True, kw_only=True)
class ChatCompletion(Sampled):
    """POST /v1/chat/completions"""
    messages: list[dict] = _messages_field()
    tools: object = setting(None, "OpenAI's `{\"type\": \"function\", \"function\": {\"name\", \"description\", "
                                  "\"parameters\"}}`, checked against the served model's template.",
                            read=_as_given, shape="array", allowed="at most 128")
    tool_choice: object = setting("auto", "`auto`, `none`, `required` or `{\"type\": \"function\", \"function\": "
                                          "{\"name\"}}`.", read=lambda raw: "auto" if raw is None else raw,
                                  shape="string or object")
    parallel_tool_calls: bool = setting(True, "Whether the model may call more than one tool at once.")
    reasoning_effort: bool = setting(False, "`low`, `medium` or `high` let a thinking model (Qwen 3) think first; "
                                            "its thinking comes back in `reasoning_content`, apart from the answer.  "
                                            "Refused for a model that cannot think.", read=_effort, shape="string",
                                     allowed="none, minimal, low, medium, high")


@dataclass(frozen=True, kw_only=True)
class Completion(Sampled):
    """POST /v1/completions"""
    prompt: str = setting(None, "The text to continue, as it is (no chat template).", required=True)


@dataclass(frozen=True, kw_only=True)
class Embeddings:
    """POST /v1/embeddings"""
    model: str = _model_field()
    input: tuple[str, ...] = _input_field()
    encoding_format: str = setting("float", "`float` lists, or `base64` of little-endian float32 (what the openai "
                                            "client asks for by default).", read=_encoding, shape="string",
                                   allowed="float, base64")
    dimensions: None = setting(None, "Refused: the served model's embeddings have the size it has.",
                               read=_refused("'dimensions' cannot be chosen: the served model's embeddings have "
                                             "the size it has", "dimensions"), shape="any", allowed="absent or null")


@dataclass(frozen=True, kw_only=True)
class OllamaOptions:
    stop: tuple[str, ...] = setting((), "Where the reply ends.", read=_option_stops, shape="array")
    num_predict: int | None = setting(None, "Most tokens to generate; 0 or less: up to the context.")
    temperature: float = setting(0.8, "Randomness; 0 is greedy.", minimum=0, maximum=2)
    top_p: float = setting(0.9, "Nucleus sampling.", minimum=0, maximum=1)
    top_k: int = setting(40, "Sample from the k likeliest tokens; 0: all.", minimum=0)
    seed: int | None = setting(None, "The same seed and request give the same reply.")
    num_ctx: int | None = setting(None, "Context tokens; above the loaded model's context, that context is served.",
                                  minimum=64)

    @property
    def sampling(self) -> Sampling:
        return Sampling(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, seed=self.seed)

    @property
    def limit(self) -> int | None:
        return self.num_predict if self.num_predict and self.num_predict > 0 else None


@dataclass(frozen=True, kw_only=True)
class OllamaGenerating:
    """What Ollama's chat and generate share."""
    model: str = _model_field()
    stream: bool = setting(True, "Stream the reply, one JSON object a line.")
    format: Grammar | None = _format_field()
    options: OllamaOptions = section(OllamaOptions)
    think: bool = setting(False, "Let a thinking model (Qwen 3) think first; its thinking comes back in `thinking`, "
                                 "apart from the answer.  Refused for a model that cannot think.", read=_think,
                          shape="boolean or string", allowed="true, false, low, medium, high")
    keep_alive: object = setting(None, "Taken and checked, but changes nothing: the model stays loaded.",
                                 read=_duration, shape="string or number")
    logprobs: None = _logprobs_field()
    top_logprobs: None = _logprobs_field()


@dataclass(frozen=True, kw_only=True)
class OllamaChat(OllamaGenerating):
    """POST /api/chat"""
    messages: list[dict] = _messages_field()
    tools: object = setting(None, "Tools as OpenAI's, checked against the served model's template.",
                            read=_as_given, shape="array", allowed="at most 128")


@dataclass(frozen=True, kw_only=True)
class OllamaGenerate(OllamaGenerating):
    """POST /api/generate"""
    prompt: str = setting("", "The user's message; empty asks to load the model (it is loaded already).")
    system: str | None = setting(None, "A system message before it.")
    raw: bool = setting(False, "Send `prompt` as it is, without the chat template.")
    images: None = setting(None, "Refused: the models on this box read text only.",
                           read=_refused("'images': the models on this box read text only; send the prompt without "
                                         "images", "images"), shape="array", allowed="absent, null or empty")


@dataclass(frozen=True, kw_only=True)
class OllamaEmbed:
    """POST /api/embed"""
    model: str = _model_field()
    input: tuple[str, ...] = _input_field()
    truncate: bool = setting(True, "Cut a text longer than the context instead of refusing it.")


@dataclass(frozen=True, kw_only=True)
class OllamaEmbeddings:
    """POST /api/embeddings (the older form)"""
    model: str = _model_field()
    prompt: str = setting(None, "The one text to embed.", required=True)


@dataclass(frozen=True, kw_only=True)
class OllamaNamed:
    """POST /api/show, DELETE /api/delete"""
    model: str = setting("", "The model's name: `tiny`, `tiny:latest`, or its file name.")
    name: str = setting("", "The older key of `model`.")

    @property
    def wanted(self) -> str:
        if not (self.model or self.name):
            raise InvalidRequest("'model' is required: a model's name (GET /api/tags lists the installed ones)",
                                 param="model")
        return (self.model or self.name)[:255]


@dataclass(frozen=True, kw_only=True)
class OllamaPull(OllamaNamed):
    """POST /api/pull"""
    stream: bool = setting(True, "Stream the progress, one JSON object a line.")


MAX_MESSAGE_CHARS = 32_000  # one message the owner types or pastes; the context is the real limit


def _title(raw: object) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise ValueError("'title' must be a string that is not empty")
    return raw.strip()[:conversations.MAX_TITLE]


def _content(raw: object) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise ValueError("'content' must be a string that is not empty; type a message")
    if len(raw) > MAX_MESSAGE_CHARS:
        raise ValueError(f"a message is at most {MAX_MESSAGE_CHARS} characters ({len(raw)} sent); shorten it or "
                         "send it in parts")
    return raw


def _source(raw: object) -> str:
    if raw not in (None, "online", "bundle"):
        raise ValueError(f"'source' is 'online' (the configured repository, update.url) or 'bundle' (one uploaded "
                         f"to PUT /update/bundle), not {str(raw)[:80]!r}")
    return raw or "online"


def _title_field(default: str | None) -> str:
    return setting(default, f"The conversation's title (cut at {conversations.MAX_TITLE} characters).",
                   required=default is None, read=_title if default is None else lambda raw: _title(raw or default),
                   shape="string", allowed="not empty")


@dataclass(frozen=True, kw_only=True)
class NewConversation:
    """POST /conversations"""
    title: str = _title_field("New chat")


@dataclass(frozen=True, kw_only=True)
class Renamed:
    """PATCH /conversations/{id}"""
    title: str = _title_field(None)


@dataclass(frozen=True, kw_only=True)
class OwnersMessage:
    """POST /conversations/{id}/messages"""
    content: str = setting(None, "What the owner wrote.", required=True, read=_content, shape="string",
                           allowed=f"1 to {MAX_MESSAGE_CHARS} characters")


@dataclass(frozen=True, kw_only=True)
class UpdateStart:
    """POST /update"""
    source: str = setting("online", "`online`: the newest release in `update.url`; `bundle`: the one uploaded.",
                          read=_source, shape="string", allowed="online, bundle")
    reboot: bool | None = setting(None, "Reboot into the new version once it is installed (null: `update.reboot`).")


@dataclass(frozen=True, kw_only=True)
class ModelChoice:
    """PUT /models/default"""
    model: str = setting(None, "A catalog tier (its name or Ollama's), or the file name of an installed GGUF.", required=True)


@dataclass(frozen=True, kw_only=True)
class Download:
    """POST /models/download"""
    tier: str = setting(None, "A tier of the catalog, by its name or Ollama's (GET /models/catalog).", required=True)


@dataclass(frozen=True, kw_only=True)
class RecoveryKey:
    """POST /backups/key"""
    group: int = setting(None, "Which group of the recovery kit's key is typed back (the kit says which).",
                         required=True, minimum=1, maximum=20)
    typed: str = setting(None, "That group, as the kit shows it.", required=True)


@dataclass(frozen=True, kw_only=True)
class Passphrase:
    """PUT /backups/sealed-key"""
    passphrase: str = setting(None, "The passphrase that seals a copy of the recovery key: 12 to 200 characters.",
                              required=True)


STICK_ID = re.compile(r"[0-9A-Za-z-]{1,64}")  # a FAT or exFAT volume's UUID as blkid reads it


def _stick(raw: object) -> str:
    if not isinstance(raw, str) or not STICK_ID.fullmatch(raw):
        raise ValueError(f"'stick' is a stick's id from GET /backups (its file system's UUID), not {str(raw)[:80]!r}")
    return raw


@dataclass(frozen=True, kw_only=True)
class StickChoice:
    """POST /backups/files/{name}/stick"""
    stick: str = setting(None, "The USB stick to copy the backup to: its `id` in GET /backups's `sticks`.",
                         read=_stick, shape="string", allowed="a file system UUID")


BODIES = (ChatCompletion, Completion, Embeddings, OllamaChat, OllamaGenerate, OllamaEmbed, OllamaEmbeddings,
          OllamaNamed, OllamaPull,
          NewConversation, Renamed, OwnersMessage, UpdateStart, ModelChoice, Download, RecoveryKey,
          Passphrase, StickChoice)


def reference() -> str:
    """docs/api.md's tables of request fields, one per body."""
    head = "| field | type | default | allowed | what |\n| --- | --- | --- | --- | --- |\n"
    return "\n".join(f"`{cls.__doc__}`:\n\n{head}{reference_rows(cls)}" for cls in BODIES)
