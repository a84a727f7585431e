"""A model and a CPU variant proven in a child before the worker loads them (appliance/inference/probe.py):
a file that makes llama.cpp abort is refused with its reason, a variant that dies of SIGILL is passed over
for the next best, and what was proven is remembered until the file, the CPU or the build changes."""

from __future__ import annotations

import json
import os
import platform
import shutil

import pytest

from appliance.errors import ModelError
from appliance.inference import llama
from appliance.inference.probe import Proofs
from tests.support.fakes import malformed_model

QEMU = shutil.which("qemu-x86_64-static") or shutil.which("qemu-x86_64")
@pytest.mark.system
def test_a_file_that_aborts_llama_cpp_is_refused_with_the_reason(tiny_model, tmp_path):
    bad = malformed_model(tiny_model, tmp_path / "bad.gguf")
    proofs = Proofs(tmp_path / "proofs.json")
    with pytest.raises(ModelError, match=r"crashed on it \(SIGABRT\): .*GGML_ASSERT"):
        proofs.prove(bad)
    assert not proofs.path.exists()  # nothing proven: neither the file nor the variant
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + os.urandom(4000))
    with pytest.raises(ModelError, match="could not be loaded: .*llama.cpp could not load"):
        proofs.prove(junk)


@pytest.mark.system
def test_a_proof_is_remembered_until_the_file_or_the_cpu_changes(tiny_model, tmp_path):
    model = tmp_path / "model.gguf"
    shutil.copy2(tiny_model, model)
    proofs = Proofs(tmp_path / "proofs.json")
    variant = proofs.prove(model)
    assert variant == llama.ranked_variants()[0]
    record = json.loads(proofs.path.read_text())
    assert record["variant"] == variant and record["why"] == "the best this CPU reports"
    assert record["models"]["model.gguf"] == [model.stat().st_size, model.stat().st_mtime_ns]
    # Proven: the same file is not run again (made malformed in place, with its size and time kept, it passes).
    stamp = model.stat()
    malformed_model(tiny_model, model)
    os.utime(model, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert proofs.prove(model) == variant
    os.utime(model)  # a file changed since its proof is proven again
    with pytest.raises(ModelError, match="SIGABRT"):
        proofs.prove(model)
    # Another CPU or llama.cpp build (another fingerprint): nothing proven holds.
    proofs.path.write_text(json.dumps(record | {"fingerprint": "0" * 32}))
    assert proofs.current() == {}
    # The owner's variant is proven on the file too, and said to be theirs.
    assert proofs.prove(tiny_model, "x64") == "x64"
    assert proofs.current()["why"] == "named by inference.cpu_variant"


@pytest.mark.emulated
@pytest.mark.skipif(platform.machine() != "x86_64" or QEMU is None, reason="needs qemu-user on an x86-64 host")
def test_variants_that_cannot_run_here_are_passed_over_for_the_best_that_runs(tiny_model, tmp_path):
    """The child runs on an emulated CPU without AVX while the ranking comes from this host's CPU, which
    reports more: the mismatch a hypervisor makes when it reports AMX it then faults on.  Each variant above
    sse42 fails in the child (its own CPU check refuses the emulated CPU: qemu reports only what it
    emulates, so it cannot make a real SIGILL here), and the box settles on sse42 and says why."""
    proofs = Proofs(tmp_path / "proofs.json", launcher=(QEMU, "-cpu", "Nehalem"))
    above = llama.ranked_variants()[:llama.ranked_variants().index("sse42")]
    assert above, "this host's CPU reports nothing above SSE4.2: no variant can fail under emulation"
    assert proofs.prove(tiny_model) == "sse42"
    assert proofs.current()["why"] == f"the best one that runs here ({', '.join(v + ' refused this CPU' for v in above)})"
    with pytest.raises(ModelError, match="no CPU variant .* runs here: haswell refused this CPU.*Clear"):
        Proofs(tmp_path / "named.json", launcher=(QEMU, "-cpu", "Nehalem")).prove(tiny_model, "haswell")

