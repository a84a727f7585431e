"""The llama.cpp build runs on any x86-64 CPU: generate under an emulated CPU without AVX, and with
the variant the owner names (inference.cpu_variant) instead of the best one."""

import os
import platform
import shutil
import subprocess
import sys

import pytest

from appliance.errors import ModelError
from appliance.inference import llama
from tests.support.variants import GENERATE, generates

X86 = pytest.mark.skipif(platform.machine() != "x86_64", reason="the x86-64 wheel's variants")
QEMU = shutil.which("qemu-x86_64-static") or shutil.which("qemu-x86_64")


@pytest.mark.emulated
@pytest.mark.skipif(platform.machine() != "x86_64" or QEMU is None, reason="needs qemu-user on an x86-64 host")
@pytest.mark.parametrize("cpu", ["Nehalem"])
def test_generates_on_a_cpu_without_avx(cpu, tiny_model):
    # The environment a box has: a host's OpenBLAS tuning (OPENBLAS_CORETYPE=Haswell) is an illegal
    # instruction on the emulated CPU, which no box would ever be told.
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENBLAS_")}
    out = subprocess.run([QEMU, "-cpu", cpu, sys.executable, "-c", GENERATE, tiny_model],
                         capture_output=True, text=True, timeout=900, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "finished 8" in out.stdout
    assert "libggml-cpu-sse42.so" in out.stderr  # the best variant for a CPU with SSE4.2 and no AVX


@pytest.mark.service
@X86
def test_a_named_variant_is_used_instead_of_the_best(tiny_model):
    out = generates(tiny_model, "x64")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "finished 8" in out.stdout and "libggml-cpu-x64.so" in out.stderr
    assert out.stderr.count("loaded CPU backend from") == 1


@pytest.mark.unit
@X86
def test_a_variant_this_build_lacks_is_a_clear_error():
    with pytest.raises(ModelError, match="no CPU variant 'pentium'; it has .*sse42"):
        llama._variant_file("pentium")
