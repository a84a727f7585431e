"""Backup and restore throughput, each against `tar | zstd` of the same data in the same run; peak memory at
two sizes (it must not grow with the backup); peak extra space on the data partition during a restore.

    ./build.py bench backup [--gigabytes 1] [--json FILE]

The data set is a box's: a database of conversations (text, compressible) and installed models (quantized
weights, incompressible: random bytes stand in), backed up with `backup.models` on.  Backup = what Back up
now does (the database's online copy, hashing, tar + zstd + age, the read-back check); restore = the check into
the staging area and the swap.  Each runs in a child process of its own, so its peak RSS is its own.  Numbers
are printed (and written with --json); nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from appliance import config, db as database
from appliance.backup import archive, contents, keys, restore, swap
from tests.backup.conftest import fresh_box, make_box

MODEL_SHARE = 0.8  # of the data set: a box's bytes are mostly its models
MESSAGE = ("Sure: here is a recipe for a quick tomato soup. Soften an onion in olive oil, add two cans of "
           "tomatoes, a pinch of sugar and salt, simmer for twenty minutes, blend, and finish with basil. ") * 4


def fill(root: Path, size: int) -> config.Config:
    """A box in `root` holding about `size` bytes: conversations, then one model for the rest."""
    box = make_box(root)
    db = database.connect(box.data.database)
    chats = int(size * (1 - MODEL_SHARE) / (50 * len(MESSAGE)))
    with database.transaction(db):  # in one transaction: the service's own writes commit one by one
        db.executemany("INSERT INTO conversations VALUES (?, 'Soup', 0, 0)", ((f"c{n}",) for n in range(chats)))
        db.executemany("INSERT INTO messages (conversation, role, content, created) VALUES (?, 'assistant', ?, 0)",
                       ((f"c{n}", MESSAGE) for n in range(chats) for _ in range(50)))
    db.close()
    box.data.models.mkdir(exist_ok=True)
    with (box.data.models / "model.gguf").open("wb") as f:
        for _ in range(int(size * MODEL_SHARE) >> 20):
            f.write(os.urandom(1 << 20))
    return box.cfg


def timed(argv: list[str], **kwargs) -> float:
    started = time.monotonic()
    subprocess.run(argv, check=True, **kwargs)
    return time.monotonic() - started


def child(verb: str, root: Path, other: Path) -> dict:
    """One measured step in this process: its seconds and its peak RSS."""
    started, phases = time.monotonic(), {"measure": 0.0, "verify": 0.0}
    if verb == "backup":
        for name, module, phase in (("measure", archive, "measure"), ("read", archive, "verify")):
            setattr(module, name, timing(getattr(module, name), phases, phase))
        cfg = config.parse({"data_dir": str(root)})
        contents.make(cfg, models=True)
        peak_space = None
    else:
        made = contents.listing(config.parse({"data_dir": str(root)}).data)[0]
        target = config.parse({"data_dir": str(other)}).data
        key = keys.Keys(config.parse({"data_dir": str(root)}).data.device).current()
        free = [shutil.disk_usage(other).free]
        done = threading.Event()

        def watch() -> None:
            while not done.wait(0.05):
                free.append(shutil.disk_usage(other).free)

        watcher = threading.Thread(target=watch)
        watcher.start()
        with made.path.open("rb") as source:
            restore.stage(target, source, key, needs=made.key)
        swap.commit(target)
        swap.finish(target)
        done.set()
        watcher.join()
        peak_space = free[0] - min(free)
    return {"seconds": time.monotonic() - started, "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "peak_space": peak_space, **phases}


def timing(function, phases: dict, phase: str):
    """`function`, its seconds added to `phases[phase]`: where a backup's time goes."""
    def timed_call(*args, **kwargs):
        started = time.monotonic()
        try:
            return function(*args, **kwargs)
        finally:
            phases[phase] += time.monotonic() - started
    return timed_call


def run_child(verb: str, root: Path, other: Path) -> dict:
    out = subprocess.run([sys.executable, "-m", "tests.bench.backup", "--child", verb, str(root), str(other)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def data_bytes(root: Path) -> int:
    data = config.parse({"data_dir": str(root)}).data
    return sum(p.stat().st_size for p in (data.database, data.owner_config, *data.models.glob("*.gguf"),
                                          *data.device.root.glob("*")) if p.is_file())


def measure(work: Path, size: int) -> dict:
    root, other = work / "box", work / "flashed"
    fill(root, size)
    fresh_box(other)
    total = data_bytes(root)
    subprocess.run(["sync"], check=True)
    packed = work / "baseline.tar.zst"
    # The baseline: the same files, plain tar into zstd at its default level, single-threaded (as the box's),
    # made durable as the box makes its own (sync), and unpacked again the same way.
    tar = timed(["sh", "-c", f"tar -C {root} -cf - paladin.db config.yaml models device | zstd -q -3 -T1 -o {packed}"
                 " && sync"])
    untar_to = work / "untar"
    untar_to.mkdir()
    untar = timed(["sh", "-c", f"zstd -q -d -c {packed} | tar -C {untar_to} -xf - && sync"])
    shutil.rmtree(untar_to)
    backup = run_child("backup", root, other)
    made = contents.listing(config.parse({"data_dir": str(root)}).data)[0]
    restored = run_child("restore", root, other)
    return {"data_bytes": total, "backup_bytes": made.size, "baseline_bytes": packed.stat().st_size,
            "tar_zstd_seconds": round(tar, 2), "backup_seconds": round(backup["seconds"], 2),
            "backup_ratio": round(tar / backup["seconds"], 3), "untar_seconds": round(untar, 2),
            # The backup's three passes: the SHA-256s for the manifest, which comes first; writing; reading back.
            "hashing_seconds": round(backup["measure"], 2), "verify_seconds": round(backup["verify"], 2),
            "write_ratio": round(tar / (backup["seconds"] - backup["measure"] - backup["verify"]), 3),
            "restore_seconds": round(restored["seconds"], 2), "restore_ratio": round(untar / restored["seconds"], 3),
            "backup_rss_mb": round(backup["rss"] / 2**20, 1), "restore_rss_mb": round(restored["rss"] / 2**20, 1),
            "restore_peak_space_ratio": round(restored["peak_space"] / total, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gigabytes", type=float, default=1.0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], Path(args.child[1]), Path(args.child[2]))))
        return
    results = {}
    for gigabytes in (args.gigabytes / 4, args.gigabytes):
        with tempfile.TemporaryDirectory(dir="/var/tmp") as work:
            results[f"{gigabytes:g} GB"] = measured = measure(Path(work), int(gigabytes * 1e9))
        print(f"{gigabytes:g} GB: " + json.dumps(measured), flush=True)
    small, big = results.values()
    results["rss_growth"] = round(big["backup_rss_mb"] / small["backup_rss_mb"], 3)
    print(json.dumps(results, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
