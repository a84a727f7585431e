"""Image benchmarks, each against a baseline measured in the same run (x86-64, qemu under TCG).

    ./build.py bench image [--arch x86-64|arm64] [--json FILE]
    ./build.py bench image --vcpus [--json FILE]

(build.py installs what it needs first; the boot installs qemu and the firmware of the architecture)

For arm64 (built through qemu-user, booted under TCG on an x86-64 host) it measures the build and
boot to /health 200 only.

* rebuild after a Python-only change: a copy of the tree whose appliance code differs, built with the
  caches the previous build left (the wheelhouse, mkosi's tools tree and package cache);
* boot to /health 200 of the image with a model, divided by boot to multi-user.target of the same
  image with the assistant switched off (a credential drop-in), i.e. the bare base.
* --vcpus instead: boot to /health 200 with qemu's -smp 1 and 2 and, with two, TCG's one thread for all
  vCPUs against one per vCPU (buildhost.qemu.QEMU's "accel"), one guest alone and two at once (as the
  update tests run two boxes), on this host's cores: what tests.support.vm.VM(cpus=) should be.
Numbers are printed; nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import httpx

from appliance import facts
from buildhost import ROOT, tinymodel
from tests.support.vm import VM

MARKER = """\
[Unit]
After=multi-user.target

[Service]
Type=oneshot
StandardOutput=journal+console
ExecStart=/bin/sh -c 'echo "BENCH-MULTI-USER"'
"""
ASSISTANT_OFF = "[Unit]\nConditionPathExists=/nonexistent\n"


def build_image(tree: Path, out: Path, model: Path, arch: str = "x86-64") -> tuple[Path, float]:
    started = time.monotonic()
    done = subprocess.run([tree / "build.py", "image", "--arch", arch, "--version", "9.9.9", "--model", model,
                           "--out", out, "--json"], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    return Path(json.loads(done.stdout.strip().splitlines()[-1])["image"]), time.monotonic() - started


def boot(image: Path, work: Path, units: dict[str, str], ready, cpus: int = 2, accel: str | None = None) -> float:
    """Seconds from qemu start (a fresh copy of `image`) until `ready(url, serial_text)` is true."""
    vm = VM(image, work / f"boot-{time.monotonic_ns()}", grow_by=0, units=units, cpus=cpus, accel=accel)
    vm.start()
    started = time.monotonic()
    try:
        while time.monotonic() - started < 900:
            if ready(vm.url, vm.console()):
                return time.monotonic() - started
            time.sleep(0.5)
        raise SystemExit(f"no boot within 900 s:\n{vm.console()[-3000:]}")
    finally:
        vm.close()


def healthy(url: str, _text: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def python_only_rebuild(work: Path, model: Path) -> float:
    """Build a copy of the tree whose only difference is a line of appliance code."""
    tree = work / "tree"
    shutil.copytree(ROOT, tree, ignore=shutil.ignore_patterns(".venv", ".git", "out", "__pycache__"))
    (tree / ".venv").symlink_to(ROOT / ".venv")
    with (tree / "appliance/__init__.py").open("a") as f:
        f.write("# a Python-only change\n")
    return build_image(tree, work / "out2", model)[1]


def measure(arch: str, work: Path) -> dict:
    model = tinymodel.write(work / "tiny.gguf", "small")
    image, warm = build_image(ROOT, work / "out", model, arch)
    if arch != "x86-64":  # emulated twice over: only the build and the boot to /health
        product = boot(image, work, {}, healthy)
        print(f"{arch}: image build {warm:.0f} s, boot to /health 200 under TCG {product:.0f} s", flush=True)
        return {"arch": arch, "build_s": round(warm), "boot_to_health_s": round(product)}
    rebuild = python_only_rebuild(work, model)
    print(f"image build with warm caches: {warm:.0f} s; after a Python-only change: {rebuild:.0f} s "
          "(goal <= 120 s)", flush=True)
    base = boot(image, work, {"bench-marker.service": MARKER, "paladin.service/off": ASSISTANT_OFF},
                lambda url, text: "BENCH-MULTI-USER" in text)
    product = boot(image, work, {}, healthy)
    print(f"boot under TCG: base image to multi-user {base:.0f} s, product to /health 200 {product:.0f} s, "
          f"ratio {product / base:.2f} (goal <= 1.3)", flush=True)
    return {"arch": arch, "build": {"warm_s": round(warm), "python_only_change_s": round(rebuild)},
            "boot": {"base_multi_user_s": round(base, 1), "product_health_s": round(product, 1),
                     "ratio": round(product / base, 2)}}


def vcpus(work: Path) -> dict:
    """Boot to /health 200 per -smp and TCG threading, alone and two guests at once (the slower of the two)."""
    image, _ = build_image(ROOT, work / "out", tinymodel.write(work / "tiny.gguf", "small"))
    results = {}
    for together in (1, 2):
        for cpus, accel in ((1, None), (2, None), (2, "tcg,thread=multi")):
            times: list[float] = []
            guests = [threading.Thread(target=lambda: times.append(boot(image, work, {}, healthy, cpus, accel)))
                      for _ in range(together)]
            for guest in guests:
                guest.start()
            for guest in guests:
                guest.join()
            how = f"-smp {cpus}" + (f", -accel {accel}" if accel else "")
            results[f"{together} guest(s), {how}"] = round(max(times), 1)
            print(f"{together} guest(s) at once, {how} each: boot to /health 200 in {max(times):.0f} s", flush=True)
    return {"boot_to_health_s": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=sorted(facts.ARCHES), default="x86-64")
    parser.add_argument("--vcpus", action="store_true", help="boot times per -smp, one guest and two at once")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = vcpus(Path(tmp)) if args.vcpus else measure(args.arch, Path(tmp))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
