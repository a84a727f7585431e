"""llama.cpp through its C API: one loaded model, one context, one sequence.

The high-level `llama_cpp.Llama` re-detokenizes the whole completion at every
streamed token (O(n) per token); this module exposes just the steps the engine
needs so that each generated token costs one decode, one sample and one piece.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import re
from pathlib import Path

import llama_cpp
import numpy as np

from ..errors import ModelError
from .generation import Sampling
from .grammar import Grammar

_backends: list[str] | None = None
log = logging.getLogger("llama.cpp")
WARN, ERROR = 3, 4  # ggml_log_level
LOADED = "loaded CPU backend from "


@llama_cpp.llama_log_callback
def _forward_log(level: int, text: bytes, _user) -> None:
    """llama.cpp narrates every tensor it loads; keep its warnings, errors and the CPU variant chosen."""
    message = text.decode(errors="replace").rstrip()
    if level in (WARN, ERROR) or LOADED in message:
        log.log(logging.ERROR if level == ERROR else logging.WARNING if level == WARN else logging.INFO,
                "%s", message)


def load_backends(variant: str = "") -> list[str]:
    """Load ggml's backend plugins (the CPU variants) once; return the devices found (logged with the variant).

    The wheel is built with GGML_BACKEND_DL so that one binary carries a CPU
    backend per instruction-set level, picked at run time for the CPU at hand.
    llama-cpp-python never loads those plugins itself.  libggml must be the
    instance libllama already uses, hence the look-up by soname with NOLOAD.
    A named `variant` (inference.cpu_variant) is loaded instead of the best one: a
    hypervisor can report instructions it then faults on (AMX on one Xeon VM).
    """
    global _backends
    if _backends is None:
        llama_cpp.llama_log_set(_forward_log, None)
        ggml = ctypes.CDLL("libggml.so.0", mode=os.RTLD_NOLOAD | ctypes.RTLD_GLOBAL)
        ggml.ggml_backend_load_all_from_path.argtypes = [ctypes.c_char_p]
        ggml.ggml_backend_load.argtypes = [ctypes.c_char_p]
        ggml.ggml_backend_load.restype = ctypes.c_void_p
        if variant:
            ggml.ggml_backend_load(str(_variant_file(variant)).encode())
        else:
            for directory in plugin_dirs():
                ggml.ggml_backend_load_all_from_path(str(directory).encode())
        ggml.ggml_backend_dev_count.restype = ctypes.c_size_t
        ggml.ggml_backend_dev_get.restype = ctypes.c_void_p
        ggml.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
        ggml.ggml_backend_dev_description.restype = ctypes.c_char_p
        ggml.ggml_backend_dev_description.argtypes = [ctypes.c_void_p]
        count = ggml.ggml_backend_dev_count()
        if count == 0:
            raise ModelError("no ggml backend could be loaded for this CPU (is the llama-cpp-python wheel complete?)")
        _backends = [ggml.ggml_backend_dev_description(ggml.ggml_backend_dev_get(i)).decode() for i in range(count)]
        llama_cpp.llama_backend_init()
    return _backends


def _variant_file(variant: str) -> Path:
    found = {path.stem.removeprefix("libggml-cpu-"): path for d in plugin_dirs() for path in d.glob("libggml-cpu-*.so")}
    if variant not in found:
        raise ModelError(f"inference.cpu_variant: this build has no CPU variant {variant!r}; "
                         f"it has {', '.join(sorted(found))}")
    return found[variant]


@functools.cache
def scores() -> dict[str, int]:
    """Each CPU variant of this build, scored by ggml for this CPU from the features it reports (each
    plugin's `ggml_backend_score`, what ggml_backend_load_all picks the best by; 0: it cannot run here)."""
    found = {}
    for d in plugin_dirs():
        for path in sorted(d.glob("libggml-cpu-*.so")):
            plugin = ctypes.CDLL(str(path), mode=os.RTLD_LOCAL)
            plugin.ggml_backend_score.restype = ctypes.c_int
            found[path.stem.removeprefix("libggml-cpu-")] = plugin.ggml_backend_score()
    return found


def ranked_variants() -> list[str]:
    """The CPU variants this CPU reports it can run, best first.  A CPU can report what it then faults on:
    inference.probe proves the pick."""
    return [name for name, score in sorted(scores().items(), key=lambda item: -item[1]) if score]


def plugin_dirs() -> list[Path]:
    """Where the CPU backends are: llama.cpp's install rules put them in <prefix>/bin, which
    the wheel maps to site-packages/bin; a build that installs them beside libllama works too."""
    package = Path(llama_cpp.__file__).parent
    return [d for d in (package / "lib", package.parent / "bin") if any(d.glob("libggml-cpu*.so"))]


class Sampler:
    """llama.cpp's sampler chain, and a grammar beside it.

    Checking every token of a large vocabulary against a grammar at every step costs more than the step
    itself (49 152 tokens for SmolLM2), so, as llama.cpp's own server does, the chain picks a token
    freely first and only that token is checked.  When the grammar refuses it, the `SHORTLIST` likeliest
    tokens are checked and the pick is made again among those it allows; only when it allows none of
    them is the whole vocabulary checked.  Greedy picks are exactly what checking everything would give;
    sampled ones differ only in leaving out allowed tokens ranked below the shortlist.
    """

    SHORTLIST = 64

    def __init__(self, sampling: Sampling, grammar: Grammar | None = None, vocab=None):
        self._chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        self._grammar = None
        self._closers = None
        add = lambda s: llama_cpp.llama_sampler_chain_add(self._chain, s)  # noqa: E731
        if sampling.temperature <= 0:
            add(llama_cpp.llama_sampler_init_greedy())
        else:
            add(llama_cpp.llama_sampler_init_top_k(sampling.top_k))
            add(llama_cpp.llama_sampler_init_top_p(sampling.top_p, 1))
            add(llama_cpp.llama_sampler_init_temp(sampling.temperature))
            seed = sampling.seed if sampling.seed is not None else int.from_bytes(os.urandom(4), "little")
            add(llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        if grammar is not None:
            self._grammar = _grammar_sampler(grammar, vocab)
            if not self._grammar:
                self.close()
                raise ModelError("llama.cpp could not parse the grammar made for this request")
            self._ids = np.arange(llama_cpp.llama_vocab_n_tokens(vocab), dtype=np.int32)
            self._tokens = np.zeros(len(self._ids), dtype=TOKEN_DATA)
            self._one = llama_cpp.llama_token_data(0, 0.0, 0.0)

    def close_up(self, closers: np.ndarray) -> None:
        """From now on favour `closers` wherever the grammar allows one: strings end, arrays and objects
        close once what they require is there, and the reply ends when the grammar does."""
        self._closers = closers

    def sample(self, ctx) -> int:
        if self._grammar is None:
            return llama_cpp.llama_sampler_sample(self._chain, ctx, -1)
        if self._closers is not None:
            np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(len(self._ids),))[
                self._closers] += CLOSING_BIAS
        token = self._pick(ctx, (self._chain,))
        self._one.id, self._one.logit = token, 0.0
        llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(
            llama_cpp.llama_token_data_array(ctypes.pointer(self._one), 1, -1, False)))
        if self._one.logit == -np.inf:
            token = self._pick(ctx, (self._grammar, self._chain), self.SHORTLIST)
            if token < 0:
                token = self._pick(ctx, (self._grammar, self._chain))
        llama_cpp.llama_sampler_accept(self._grammar, token)
        llama_cpp.llama_sampler_accept(self._chain, token)
        return token

    def _pick(self, ctx, samplers, shortlist: int = 0) -> int:
        """The token `samplers`, applied in turn to the last logits (only the `shortlist` highest, if given),
        select; -1 when the first of them (the grammar) leaves none of the shortlist."""
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(len(self._ids),))
        tokens = self._tokens
        if shortlist:
            ids = np.argpartition(logits, -shortlist)[-shortlist:]
            tokens = tokens[:shortlist]
            tokens["id"], tokens["logit"] = ids, logits[ids]
        else:
            tokens["id"], tokens["logit"] = self._ids, logits  # the samplers sort the array in place
        array = llama_cpp.llama_token_data_array(
            tokens.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token_data)), len(tokens), -1, False)
        for sampler in samplers:
            llama_cpp.llama_sampler_apply(sampler, ctypes.byref(array))
            if shortlist and np.isneginf(tokens["logit"]).all():
                return -1  # the grammar allows none of the shortlist
        return int(array.data[array.selected].id)

    def close(self) -> None:
        llama_cpp.llama_sampler_free(self._chain)
        if self._grammar:
            llama_cpp.llama_sampler_free(self._grammar)


# llama.cpp's file types by number, named as Ollama names them: LLAMA_FTYPE_MOSTLY_Q4_1 is "Q4_1".
FILE_TYPES = {getattr(llama_cpp, n): n.removeprefix("LLAMA_FTYPE_").removeprefix("MOSTLY_").removeprefix("ALL_")
              for n in dir(llama_cpp) if n.startswith("LLAMA_FTYPE_")}
CLOSING_BIAS = 100.0  # added to a logit: above any a model gives, so an allowed closer always wins
TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])  # llama_token_data


def _grammar_sampler(grammar: Grammar, vocab):
    text, root = grammar.text.encode(), grammar.root.encode()
    if not grammar.triggers:
        return llama_cpp.llama_sampler_init_grammar(vocab, text, root)
    # Lazy: llama.cpp matches each pattern against the whole output so far and, once one matches, feeds the
    # grammar the output from the pattern's first group on.
    patterns = [f"[\\s\\S]*?({re.escape(trigger)})[\\s\\S]*".encode() for trigger in grammar.triggers]
    array = (ctypes.c_char_p * len(patterns))(*patterns)
    return llama_cpp.llama_sampler_init_grammar_lazy_patterns(vocab, text, root, array, len(patterns), None, 0)


class Model:
    """A GGUF model with one context whose KV cache holds `self.cached` (sequence 0)."""

    def __init__(self, path: Path, *, threads: int, context_tokens: int, batch: int = 512, cpu_variant: str = ""):
        load_backends(cpu_variant)
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelError(f"{self.path}: no such model file")
        self._model = llama_cpp.llama_model_load_from_file(str(self.path).encode(),
                                                           llama_cpp.llama_model_default_params())
        if not self._model:
            raise ModelError(f"{self.path}: llama.cpp could not load this file as a GGUF model")
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = context_tokens
        params.n_batch = params.n_ubatch = min(batch, context_tokens)
        params.n_threads = params.n_threads_batch = threads
        params.no_perf = True
        # Sequence 1 is for embeddings (`embed`), in the one KV cache beside the chat's sequence 0.
        params.n_seq_max, params.kv_unified = 2, True
        self.ctx = llama_cpp.llama_init_from_model(self._model, params)
        if not self.ctx:
            llama_cpp.llama_model_free(self._model)
            raise ModelError(f"{self.path}: could not create a context of {context_tokens} tokens")
        self._memory = llama_cpp.llama_get_memory(self.ctx)
        self.n_ctx = llama_cpp.llama_n_ctx(self.ctx)
        self.batch = params.n_batch
        self.threads = threads
        self.cached: list[int] = []
        self._piece = ctypes.create_string_buffer(256)

    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(65536)
        n = llama_cpp.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", "replace") if n >= 0 else None

    @property
    def quantization(self) -> str:
        """The file's type as Ollama names it ("Q4_K_M", "F16"); "" if unknown."""
        number = self.meta("general.file_type") or ""
        return FILE_TYPES.get(int(number), "") if number.isdigit() else ""

    @property
    def size_bytes(self) -> int:
        return llama_cpp.llama_model_size(self._model)

    @property
    def parameters(self) -> int:
        return llama_cpp.llama_model_n_params(self._model)

    def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        data = text.encode()
        capacity = len(data) + 8
        buf = (llama_cpp.llama_token * capacity)()
        n = llama_cpp.llama_tokenize(self._vocab, data, len(data), buf, capacity, add_special, True)
        if n < 0:
            raise ModelError(f"tokenizer needed {-n} tokens for {len(data)} bytes")
        return buf[:n]

    @property
    def vocab(self):
        return self._vocab

    def piece(self, token: int, special: bool = False) -> bytes:
        """The token's text; `special` spells out control tokens too (Mistral's [TOOL_CALLS] is one)."""
        n = llama_cpp.llama_token_to_piece(self._vocab, token, self._piece, len(self._piece), 0, special)
        return self._piece.raw[:n]

    def special_text(self, name: str) -> str:
        """The text of the model's `bos` or `eos` token, for chat templates that spell it out."""
        token = self.meta(f"tokenizer.ggml.{name}_token_id")
        return llama_cpp.llama_vocab_get_text(self._vocab, int(token)).decode("utf-8", "replace") if token else ""

    def is_end(self, token: int) -> bool:
        return llama_cpp.llama_vocab_is_eog(self._vocab, token)

    @functools.cached_property
    def closers(self) -> np.ndarray:
        """Tokens that close JSON (pieces of only quotes, braces and brackets) and the end-of-generation ones."""
        found = []
        for token in range(llama_cpp.llama_vocab_n_tokens(self._vocab)):
            text = self.piece(token).strip()
            if (text and not text.strip(b'"}]')) or self.is_end(token):
                found.append(token)
        return np.array(found, dtype=np.int32)

    def _decode(self, tokens: list[int]) -> None:
        array = (llama_cpp.llama_token * len(tokens))(*tokens)
        if llama_cpp.llama_decode(self.ctx, llama_cpp.llama_batch_get_one(array, len(tokens))) != 0:
            raise ModelError(f"llama_decode failed with {len(self.cached)} tokens in the context")
        self.cached.extend(tokens)

    def prefill(self, tokens: list[int], should_stop=lambda: False) -> int:
        """Make the KV cache hold `tokens`; return how many were reused from the previous request.

        The last token is always decoded again so that fresh logits exist to sample from.
        """
        reused = 0
        for a, b in zip(self.cached, tokens[:-1]):
            if a != b:
                break
            reused += 1
        llama_cpp.llama_memory_seq_rm(self._memory, 0, reused, -1)
        del self.cached[reused:]
        for start in range(reused, len(tokens), self.batch):
            if should_stop():
                break
            self._decode(tokens[start:start + self.batch])
        return reused

    def embed(self, tokens: list[int]) -> list[float]:
        """The mean of the last layer's states over `tokens`, L2-normalised: this chat model's embedding of
        the text.  Decoded as sequence 1, so the chat's cache (sequence 0) is kept; at most one batch long."""
        if not 0 < len(tokens) <= self.batch:
            raise ModelError(f"an embedding input is 1 to {self.batch} tokens, not {len(tokens)}")
        if len(self.cached) + len(tokens) > self.n_ctx:  # the one KV cache is full of chat: that goes first
            self.reset()
        batch = llama_cpp.llama_batch_init(len(tokens), 0, 1)
        try:
            for i, token in enumerate(tokens):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, i, 1
                batch.seq_id[i][0] = 1
                batch.logits[i] = True  # every token's state is output, for the mean
            batch.n_tokens = len(tokens)
            llama_cpp.llama_set_embeddings(self.ctx, True)
            if llama_cpp.llama_decode(self.ctx, batch) != 0:
                raise ModelError(f"llama_decode failed on an embedding input of {len(tokens)} tokens")
            states = np.ctypeslib.as_array(llama_cpp.llama_get_embeddings(self.ctx),
                                           shape=(len(tokens), llama_cpp.llama_model_n_embd(self._model)))
            vector = states.mean(axis=0, dtype=np.float64)
        finally:
            llama_cpp.llama_set_embeddings(self.ctx, False)
            llama_cpp.llama_memory_seq_rm(self._memory, 1, -1, -1)
            llama_cpp.llama_batch_free(batch)
        return (vector / (np.linalg.norm(vector) or 1.0)).tolist()

    def reset(self) -> None:
        llama_cpp.llama_memory_clear(self._memory, True)
        self.cached.clear()

    def advance(self, token: int) -> None:
        self._decode([token])

    def close(self) -> None:
        if self.ctx:
            llama_cpp.llama_free(self.ctx)
            llama_cpp.llama_model_free(self._model)
            self.ctx = None
