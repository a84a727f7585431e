"""The long power-cut run: N random power cuts during an update (x86-64, qemu under TCG).

    ./build.py bench powercut [--points 20] [--seed S] [--json FILE]

Builds v1 and v2 with fresh signing keys, releases v2 (a bundle), then for each point installs the
bundle on a box running v1 (with a conversation written on it) and kills qemu at a random moment of one
phase (download, write, UKI install, first boot of v2, in turn), boots again and checks that a good
version answers and the conversation is intact.  A box that ends up on v2 is replaced by a fresh v1.  CI runs one cut per phase (tests/image/updates/test_update_image.py); this
is the longer run whose results docs/benchmarks.md records.  About 3 minutes per point.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from buildhost import ROOT, tinymodel
from tests.support.vm import (VM, build_image, conversation_intact, cut_first_boot, cut_power, release,
                run_build, write_conversation)

PHASES = ("download", "write", "uki", "first boot")


class Box:
    """A box on v1 with a conversation; a fresh one (copy of the v1 image) once an update went through."""

    def __init__(self, image: Path, work: Path):
        self.image, self.work, self.vm, self.fresh = image, work, None, 0

    def ready(self) -> VM:
        if self.vm is None:
            self.fresh += 1
            self.vm = VM(self.image, self.work / f"box-{self.fresh}")
            self.vm.start()
            self.vm.wait_health(version="1")
            with self.vm.client() as client:
                self.conversation = write_conversation(client)
        return self.vm

    def point(self, bundle: Path, phase: str, rng: random.Random) -> dict:
        started = time.monotonic()
        vm = self.ready()
        if phase == "first boot":
            vm.kill()
            cut = cut_first_boot(vm, bundle, rng)
        else:
            cut = cut_power(vm, bundle, phase, rng)
        vm.start()
        health = vm.wait_health()
        with vm.client() as client:
            intact = conversation_intact(client, self.conversation)
        if health["version"] != "1":  # updated: the next cut needs a box that still runs v1
            vm.close()
            self.vm = None
        return {"cut": cut, "booted": health["version"], "healthy": health["status"] == "ok", "intact": intact,
                "seconds": round(time.monotonic() - started)}


def main() -> None:
    top = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("--points", type=int, default=20)
    top.add_argument("--seed", type=int, default=int(time.time()))
    top.add_argument("--json", help="also write the results to this file")
    args = top.parse_args()
    rng = random.Random(args.seed)
    print(f"seed {args.seed}")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        keys, model = work / "keys", tinymodel.write(work / "tiny.gguf", "small")
        run_build(ROOT / "build.py", "keys", "init", "--keys", keys)
        v1 = build_image("1", work / "v1", model, keys)
        v2 = build_image("2", work / "v2", model, keys)
        release(v2, work / "repo", keys)
        bundle = work / "repo/bundles/paladin_2_x86-64.bundle"
        box = Box(Path(v1["image"]), work)
        try:
            for number in range(args.points):
                result = box.point(bundle, PHASES[number % len(PHASES)], rng)
                results.append(result)
                print(f"{number + 1:2}/{args.points}: cut at {result['cut']}: booted {result['booted']}, "
                      f"healthy {result['healthy']}, conversation intact {result['intact']} "
                      f"({result['seconds']} s)", flush=True)
        finally:
            if box.vm:
                box.vm.close()
    good = sum(r["healthy"] and r["intact"] for r in results)
    print(f"{good}/{len(results)} power cuts ended in a healthy box with its data intact (seed {args.seed})")
    if args.json:
        Path(args.json).write_text(json.dumps({"seed": args.seed, "points": results}, indent=1))


if __name__ == "__main__":
    main()
