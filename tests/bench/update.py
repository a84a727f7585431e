"""Update benchmarks (x86-64, qemu under TCG), each against a baseline measured in the same run.

    ./build.py bench update [--json FILE]

* apply time: paladin-update's write + verify + UKI phases for a downloaded release, divided by a
  raw `dd` (conv=fsync) of the same uncompressed root image onto the same slot of the same virtual
  disk, run in the same box right after;
* downloaded bytes for an update whose only change is Python code (v2 is built from a copy of the tree
  with one appliance module changed), against the uncompressed root slot.
Numbers are printed; nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import tempfile
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from buildhost import ROOT, tinymodel
from tests.support.vm import VM, build_image, release, request_update, run_build, update_status, wait_update

# Started at boot, waits until the update is installed, then writes the same root image raw.
DD_UNIT = """\
[Service]
Type=oneshot
TimeoutStartSec=infinity
StandardOutput=journal+console
ExecStart=/bin/sh -c 'until grep -q installed /var/lib/paladin-update/status.json; do sleep 2; done'
ExecStart=/usr/bin/python3 -c 'import shutil, urllib.request; \
shutil.copyfileobj(urllib.request.urlopen("{url}"), open("/var/tmp/root.raw", "wb"))'
ExecStart=/bin/sync
ExecStart=/bin/sh -c 's=$$(date +%%s.%%N); dd if=/var/tmp/root.raw of=/dev/disk/by-partlabel/paladin_{version} \
bs=4M conv=fsync status=none; echo "BENCH-DD $$s $$(date +%%s.%%N)"'
"""


class Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def measure(work: Path) -> dict:
    keys, model, www = work / "keys", tinymodel.write(work / "tiny.gguf", "small"), work / "www"
    run_build(ROOT / "build.py", "keys", "init", "--keys", keys)
    v1 = build_image("1", work / "v1", model, keys)
    tree = work / "tree"
    shutil.copytree(ROOT, tree, ignore=shutil.ignore_patterns(".venv", ".git", "out", "__pycache__"))
    with (tree / "appliance/inference/prompts.py").open("a") as f:
        f.write("\n# a Python-only change\n")
    v2 = build_image("2", work / "v2", model, keys, tree=tree)
    release(v2, www / "repo", keys)
    raw_root = next(Path(v2["image"]).parent.glob("paladin_2_x86-64.root-x86-64.*.raw"))
    shutil.copy(raw_root, www / "root.raw")
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(www)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://10.0.2.2:{server.server_address[1]}"
    vm = VM(Path(v1["image"]), work / "box", grow_by=4 << 30,
            units={"bench-dd.service": DD_UNIT.format(url=f"{url}/root.raw", version="2")})
    try:
        vm.start()
        vm.wait_health(version="1")
        with vm.client() as client:
            since = request_update(client, f"{url}/repo", reboot=False)
            status = wait_update(client, since)["update"]
            if status["phase"] != "installed":
                raise SystemExit(f"the update failed: {status}")
        deadline = time.monotonic() + 1800
        while not (found := re.search(r"BENCH-DD ([\d.]+) ([\d.]+)", vm.console())):
            if time.monotonic() > deadline:
                raise SystemExit("no dd result on the console")
            time.sleep(3)
        with vm.client() as client:
            snapshot = update_status(client)
    finally:
        vm.close()
        server.shutdown()
    seconds = status["seconds"]
    apply = seconds["write"] + seconds["verify"] + seconds["uki"]
    dd = float(found.group(2)) - float(found.group(1))
    return {"apply_seconds": round(apply, 1), "phases": seconds, "dd_seconds": round(dd, 1),
            "apply_over_dd": round(apply / dd, 2), "downloaded_bytes": status["done"],
            "root_slot_bytes": raw_root.stat().st_size,
            "downloaded_over_root": round(status["done"] / raw_root.stat().st_size, 3),
            "slots_after": [s["label"] for s in snapshot.get("slots", [])]}


def main() -> None:
    top = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("--json", help="also write the results to this file")
    args = top.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = measure(Path(tmp))
    print(f"update apply (write {result['phases']['write']} s + verify {result['phases']['verify']} s + "
          f"UKI {result['phases']['uki']} s) = {result['apply_seconds']} s; raw dd of the same root "
          f"{result['dd_seconds']} s; ratio {result['apply_over_dd']} (target <= 1.5)")
    print(f"downloaded for a Python-only change: {result['downloaded_bytes'] / 2**20:.0f} MiB, "
          f"{result['downloaded_over_root']:.1%} of the {result['root_slot_bytes'] / 2**20:.0f} MiB root slot "
          "(delta-update goal <= 20%)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
