"""The shipped model catalog (appliance/catalog.yaml): real tiers, pinned, named as Ollama's library names them,
their memory as the governor counts it, and the tier a box of each size is offered first."""

from __future__ import annotations

import re
from pathlib import Path

import gguf
import pytest
import yaml

from appliance.catalog import Catalog, CatalogError
from tests.support.catalog import tier_entry
from tests.support.generated import Generated
from appliance.inference import gguf as header, prompts
from appliance.inference.prompts import ChatTemplate

SHIPPED = Catalog.read()
GIB = 2**30


@pytest.mark.unit
def test_every_tier_is_pinned_free_to_use_and_the_ladder_runs_small_to_large():
    assert len(SHIPPED.tiers) >= 12
    for tier in SHIPPED.tiers:
        assert re.fullmatch(r"https://huggingface\.co/[\w.-]+/[\w.-]+/resolve/[0-9a-f]{40}/" + re.escape(tier.file),
                            tier.url), tier.name
        assert re.fullmatch(r"[0-9a-f]{64}", tier.sha256) and tier.size > 0 and tier.file.endswith(".gguf")
        assert "non-commercial" not in tier.licence.lower() and tier.licence
        assert tier.tools in ("none", "generic", "hermes", "llama3-json")
    assert [t.size for t in SHIPPED.tiers] == sorted(t.size for t in SHIPPED.tiers)
    for names in ([t.name for t in SHIPPED.tiers], [t.ollama for t in SHIPPED.tiers], [t.file for t in SHIPPED.tiers]):
        assert len(set(names)) == len(names)


@pytest.mark.unit
@pytest.mark.parametrize("asked, tier", [
    ("qwen2.5:1.5b", "qwen2.5-1.5b"), ("Qwen2.5:1.5B", "qwen2.5-1.5b"), ("llama3.2:1b", "llama3.2-1b"),
    ("llama3.2", "llama3.2-3b"), ("llama3.2:latest", "llama3.2-3b"), ("gemma3:1b", "gemma3-1b"), ("qwen3:4b", "qwen3-4b"),
    ("phi4-mini", "phi4-mini"), ("smollm2", "smollm2-1.7b"), ("smollm2-135m", "smollm2-135m"),
    ("qwen3:4b-instruct-2507-q4_K_M", "qwen3-4b-instruct-2507"), ("qwen3:4b-instruct-2507-Q4_K_M", "qwen3-4b-instruct-2507"),
    ("qwen2.5", None), ("qwen3:latest", None), ("mistral", None)])
def test_ollama_names_map_as_ollamas_library_maps_them(asked, tier):
    found = SHIPPED.named(asked)
    assert (found and found.name) == tier


@pytest.mark.unit
def test_a_name_that_is_no_tier_says_what_it_is_and_what_is_here():
    said = SHIPPED.unknown("qwen2.5:latest")
    assert "Ollama's 'qwen2.5' is qwen2.5:7b, which this catalog does not have" in said
    assert "qwen2.5-1.5b (qwen2.5:1.5b)" in said and "llama3.2-3b (llama3.2:3b)" in said


@pytest.mark.unit
def test_each_tiers_cache_per_token_is_what_its_gguf_header_says(tmp_path):
    """The catalog's shape is what the model's header carries: the governor reads the same number from the
    installed file (inference/gguf.py), so the memory the wizard shows is the memory the governor counts."""
    for tier in SHIPPED.tiers:
        path = tmp_path / tier.file
        writer = gguf.GGUFWriter(str(path), "llama")
        writer.add_block_count(tier.layers)
        writer.add_embedding_length(tier.embedding)
        writer.add_head_count(tier.heads)
        writer.add_head_count_kv(tier.kv_heads)
        writer.add_key_length(tier.head_dim)
        writer.add_value_length(tier.head_dim)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.close()
        assert header.kv_bytes_per_token(path) == tier.kv_bytes_per_token, tier.name


@pytest.mark.unit
@pytest.mark.parametrize("gib, offered, why", [
    (1, "smollm2-135m", "the smallest model"), (2, "llama3.2-1b", "the largest model with tools"),
    (4, "qwen3-1.7b", "the largest model with tools"), (8, "qwen3-4b-instruct-2507", "at most half of this box's 8.0 GiB"),
    (16, "qwen3-4b-instruct-2507", "at most half")])
def test_each_box_is_offered_the_largest_tier_with_tools_that_leaves_it_half_its_memory(gib, offered, why):
    total = gib * GIB
    chosen = SHIPPED.recommend(total, 15 if total <= 8 * GIB else 10, 4096)
    assert chosen.tier.name == offered and why in chosen.why
    if gib >= 2:
        assert chosen.tier.has_tools and 2 * chosen.tier.ram(4096) <= total
    assert SHIPPED.recommend(256 * 2**20, 15, 4096) == (None, "no model of the catalog fits this box's 0.2 GiB of memory")


@pytest.mark.unit
def test_a_tiers_memory_counts_the_cache_at_the_boxs_context_up_to_its_own():
    tier = SHIPPED.named("qwen2.5:1.5b")
    assert tier.kv_bytes_per_token == 28 * 2 * 128 * 2 * 2
    assert tier.ram(4096) == tier.size + 4096 * tier.kv_bytes_per_token
    assert tier.ram(10**6) == tier.size + tier.context * tier.kv_bytes_per_token


@pytest.mark.unit
@pytest.mark.parametrize("change, message", [
    ({"size": "big"}, "tier 1 (t): size: 'big' is not a int"),
    ({"licence": None}, "tier 1 (t): licence: None is not a str"),
    ({"extra": 1}, "tier 1: needs exactly the keys name, ollama, file"),
    ({"tools": "hermse"}, "tier 1 (t): tools: 'hermse' is not one of hermes, llama3-json, mistral, generic, none"),
])
def test_a_broken_catalog_names_the_tier_and_the_field(tmp_path, change, message):
    entry = tier_entry("t", "https://x/t.gguf", 1, "0" * 64) | change
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump({"tiers": [entry]}))
    with pytest.raises(CatalogError, match=re.escape(message)):
        Catalog.read(path)


@pytest.mark.unit
@pytest.mark.parametrize("text", ["tiers: 3\n", "latest: [a, b]\ntiers: []\n", "- just a list\n", "tiers: [\n"])
def test_a_file_that_is_no_catalog_is_said_to_be_none(tmp_path, text):
    path = tmp_path / "catalog.yaml"
    path.write_text(text)
    with pytest.raises(CatalogError, match="not a catalog"):
        Catalog.read(path)


@pytest.mark.unit
def test_qwen3s_template_thinks_only_when_told_to():
    """Qwen 3's chat template, as published: with thinking off it opens an empty thought."""
    template = ChatTemplate((Path(__file__).parent / "templates/qwen3.jinja").read_text())
    assert prompts.thinks(template.source)
    said = [{"role": "user", "content": "hi"}]
    assert template.render(said).endswith("<think>\n\n</think>\n\n")
    assert template.render(said, think=True).endswith("<|im_start|>assistant\n")


LADDER = Generated(Path(__file__).parents[1] / "docs/models.md", "<!-- the ladder: generated from appliance/catalog.yaml",
                   "<!-- end of the ladder -->")


def ladder_table() -> str:
    rows = [f"| `{t.name}` | `{t.ollama}` | {t.size / 1e9:.2f} GB | {t.ram(4096) / 2**30:.1f} GiB | "
            f"{t.context} | {t.tools} | {t.licence} |" for t in SHIPPED.tiers]
    return "\n".join(["| tier | Ollama's name | download | memory at 4096 tokens | its context | tools | licence |",
                      "| --- | --- | --- | --- | --- | --- | --- |", *rows]) + "\n"


@pytest.mark.unit
def test_the_docs_list_the_ladder_as_it_is():
    assert LADDER.read() == ladder_table() + "\n", \
        "docs/models.md's ladder is stale: run `.venv/bin/python -m tests.test_catalog`"


if __name__ == "__main__":
    LADDER.write(ladder_table())
