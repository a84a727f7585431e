"""Generated GGUF models: real llama.cpp models made locally, for tests, benchmarks and demos.

The weights are random but deterministic (a fixed seed), so text is noise but
speed is real.  Two properties are built into the weights rather than left to
chance, because tests and benchmarks rely on them:

* Control and byte tokens are never generated.  Every token embedding carries
  the constant 1.0 in dimension 0 and no layer writes to that dimension, so
  after the final RMS norm that coordinate is always positive; the output rows
  of the suppressed tokens are -1000 there and 0 elsewhere.  Their logits are
  therefore hugely negative at every step: no end-of-sequence (lengths are
  exactly `max_tokens`) and no partial UTF-8 sequences (streams never stall).
* The vocabulary is a SentencePiece-style one with byte fallback, so any input
  text tokenizes.

`write(..., only=[...])` makes a model that writes nothing but the given strings (in
random order): the same suppression, applied to every other token.  Tests use it
for output they can check, such as hostile markup.

`write(..., script=[...])` makes a model that writes the given strings in that order,
whatever it is asked, and then ends: each layer adds nothing to the residual stream,
so the next token depends only on the last one.  A token outside the script points
to its first string, each string of it to the next, the last to end-of-sequence; end
of sequence is also the likeliest token after any string of the script, so a grammar
that refuses the next string ends the reply.  Tests use it to see exactly what a
family's chat template and markers come to (thinking, tool calls, end-of-turn).
"""

from __future__ import annotations

import argparse
import itertools
import string
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

SEED = 20261125
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
# Templates that teach tool calls the way each family's real templates do (shortened), for the tool tests.
_TOOLS = ("{% if tools %}<|system|>\nTools:\n{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}{% endif %}")
_TURNS = ("{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}"
          "{% for call in message.tool_calls or [] %}CALL{{ call.function | tojson }}END{% endfor %}\n{% endfor %}"
          "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
TEMPLATES = {
    "plain": CHAT_TEMPLATE,
    "hermes": _TOOLS + "Call one as <tool_call>{\"name\": ..., \"arguments\": ...}</tool_call>\n"
              + _TURNS.replace("CALL", "<tool_call>").replace("END", "</tool_call>"),
    "llama3": _TOOLS + "Environment: ipython\nCall one as {\"name\": ..., \"parameters\": ...}\n"
              + _TURNS.replace("CALL", "").replace("END", ""),
    "mistral": _TOOLS + "Call as [TOOL_CALLS][...]\n" + _TURNS.replace("CALL", "[TOOL_CALLS][").replace("END", "]"),
}


@dataclass(frozen=True)
class Shape:
    embedding: int
    layers: int
    feed_forward: int
    vocab: int
    dtype: type
    heads: int = 0  # 0: one per 64 of the embedding, each of 64, keys and values for every head
    kv_heads: int = 0
    head_dim: int = 0
    tied: bool = False  # the output is the token embedding, as in most small models (no control of the output)

    @property
    def attention(self) -> tuple[int, int, int]:
        """Heads, KV heads and head size."""
        heads = self.heads or max(1, self.embedding // 64)
        return heads, self.kv_heads or heads, self.head_dim or self.embedding // heads


SIZES = {
    "small": Shape(embedding=128, layers=4, feed_forward=384, vocab=1200, dtype=np.float32),    # ~6 MB
    "medium": Shape(embedding=512, layers=8, feed_forward=1536, vocab=8000, dtype=np.float16),  # ~70 MB
    "large": Shape(embedding=2048, layers=6, feed_forward=5632, vocab=12000, dtype=np.float16),  # ~620 MB
}


def vocabulary(size: int, words: tuple[str, ...] = ()) -> tuple[list[str], list[float], list[int]]:
    """Specials, 256 byte tokens, `words`, printable characters, then syllables with and without a word
    start."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL] + [gguf.TokenType.BYTE] * 256
    syllables = [c + v for c, v in itertools.product("bdfghklmnprstvwyz", "aeiou")]
    words_of = (map("".join, itertools.product(syllables, repeat=n)) for n in (1, 2, 3))
    pieces = itertools.chain([w.replace(" ", "\u2581") for w in words], ["\u2581"],
                             [c for c in string.printable if not c.isspace()],
                             (piece for word in itertools.chain.from_iterable(words_of) for piece in ("\u2581" + word, word)))
    pieces = list(itertools.islice(_unique(pieces), size - len(tokens)))  # llama.cpp aborts on a duplicate
    if len(pieces) < size - len(tokens):
        raise ValueError(f"vocabulary size {size} is larger than this generator makes")
    scores = [0.0] * len(tokens) + [-float(i) for i in range(len(pieces))]
    return tokens + pieces, scores, types + [gguf.TokenType.NORMAL] * len(pieces)


def _unique(items):
    seen = set()
    for item in items:
        if item not in seen:
            seen.add(item)
            yield item


def _describe(writer, shape, name: str, vocabulary: tuple, template: str) -> None:
    """The model's metadata: a llama architecture of `shape`, its vocabulary and its chat template."""
    heads, kv_heads, head_dim = shape.attention
    writer.add_name(name)
    writer.add_context_length(8192)
    writer.add_embedding_length(shape.embedding)
    writer.add_block_count(shape.layers)
    writer.add_feed_forward_length(shape.feed_forward)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32 if shape.dtype is np.float32 else gguf.LlamaFileType.MOSTLY_F16)
    writer.add_tokenizer_model("llama")
    tokens, scores, types = vocabulary
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_chat_template(template)


def write(path: Path, size: str | Shape = "small", name: str | None = None, only: tuple[str, ...] = (),
          template: str = "plain", script: tuple[str, ...] = ()) -> Path:
    """A model of one of SIZES, or of a `Shape` (a real model's, for a benchmark); `template`: a name in
    TEMPLATES or a chat template's text."""
    shape = SIZES[size] if isinstance(size, str) else size
    rng = np.random.default_rng(SEED)
    d, ff = shape.embedding, shape.feed_forward
    heads, kv_heads, head_dim = shape.attention
    tokens, scores, types = vocabulary(shape.vocab, only or script)
    first = types.index(gguf.TokenType.NORMAL)
    allowed = range(first, first + len(only or script)) if only or script else range(first, len(tokens))
    suppressed = [i for i in range(len(tokens)) if i not in allowed]

    def matrix(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols), dtype=np.float32) / np.sqrt(cols)).astype(shape.dtype)

    def without_dim0(m: np.ndarray) -> np.ndarray:
        m[0, :] = 0  # layers never write dimension 0 of the residual stream
        if script:
            m[:] = 0  # nor anything else: the last token alone says what comes next
        return m

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")  # renamed at the end: no reader sees half a model
    writer = gguf.GGUFWriter(str(partial), "llama")
    _describe(writer, shape, name or f"paladin-tiny-{size if isinstance(size, str) else 'shaped'}",
              (tokens, scores, types), TEMPLATES.get(template, template))

    embedding = matrix(shape.vocab, d)
    embedding[:, 0] = 1.0
    output = matrix(shape.vocab, d)
    output[:, 0] = 0
    output[suppressed, :] = 0
    output[suppressed, 0] = -1000
    if script:
        _chain(embedding, output, first, len(script))
    writer.add_tensor("token_embd.weight", embedding)
    for layer in range(shape.layers):
        prefix = f"blk.{layer}."
        writer.add_tensor(prefix + "attn_norm.weight", np.ones(d, dtype=np.float32))
        writer.add_tensor(prefix + "attn_q.weight", matrix(heads * head_dim, d))
        writer.add_tensor(prefix + "attn_k.weight", matrix(kv_heads * head_dim, d))
        writer.add_tensor(prefix + "attn_v.weight", matrix(kv_heads * head_dim, d))
        writer.add_tensor(prefix + "attn_output.weight", without_dim0(matrix(d, heads * head_dim)))
        writer.add_tensor(prefix + "ffn_norm.weight", np.ones(d, dtype=np.float32))
        writer.add_tensor(prefix + "ffn_gate.weight", matrix(ff, d))
        writer.add_tensor(prefix + "ffn_up.weight", matrix(ff, d))
        writer.add_tensor(prefix + "ffn_down.weight", without_dim0(matrix(d, ff)))
    writer.add_tensor("output_norm.weight", np.ones(d, dtype=np.float32))
    if not shape.tied:
        writer.add_tensor("output.weight", output)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    partial.replace(path)
    return path


def _chain(embedding: np.ndarray, output: np.ndarray, first: int, length: int) -> None:
    """The weights of a script of `length` tokens from `first` on (see the module's docstring): dimension k + 1
    of the residual stream marks the script's k-th token, the last dimension any token outside it."""
    d = embedding.shape[1]
    if length > d - 2:
        raise ValueError(f"a script of {length} strings is longer than this size's {d - 2}")
    embedding[:, 1:] = 0
    embedding[:, d - 1] = 8.0
    output[first:first + length, :] = 0
    output[first, d - 1] = 10.0
    for k in range(length):
        embedding[first + k, d - 1] = 0
        embedding[first + k, k + 1] = 8.0
        if k + 1 < length:
            output[first + k + 1, k + 1] = 10.0
    output[2, :] = 0  # end of sequence: after the last string, and above every token but the next string
    output[2, length] = 10.0
    output[2, 0] = 2.0


def main(argv: list[str] | None = None) -> None:
    top = argparse.ArgumentParser(prog="build.py tiny-model", description=__doc__.splitlines()[0])
    top.add_argument("out", type=Path)
    top.add_argument("--size", choices=list(SIZES), default="small", help="about 5 MB, 70 MB or 620 MB")
    args = top.parse_args(argv)
    print(write(args.out, args.size))


if __name__ == "__main__":
    main()
