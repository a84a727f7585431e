"""Debian on the build host: the host's own packages, and packages taken from the archive through its
chain of trust (signed InRelease -> Packages -> .deb), such as trixie's mkosi on a Debian 12 host."""

from __future__ import annotations

import hashlib
import lzma
import os
import platform
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

from appliance import facts

from . import CACHE
from .steps import StepError, run, say

MIRROR = "http://deb.debian.org/debian"
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
MKOSI_SUITE = "trixie"  # mkosi >= 25 is not in Debian 12: take trixie's (pure Python), verified, unpacked


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


def fetch(url: str, dest: Path, sha256: str | None = None) -> Path:
    """Download `url` to `dest` (atomically), checking `sha256` when given."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, partial.open("wb") as out:
            shutil.copyfileobj(response, out)
    except OSError as err:
        raise StepError(f"download of {url} failed: {err}", "the Debian mirror must be reachable") from None
    if sha256 and hashlib.sha256(partial.read_bytes()).hexdigest() != sha256:
        partial.unlink()
        raise StepError(f"{url} does not match the SHA-256 the signed archive index gives")
    partial.replace(dest)
    return dest


def debian_package(name: str, suite: str) -> Path:
    """Fetch a Debian package through the archive's chain of trust: signed InRelease -> Packages -> .deb."""
    work = CACHE / "debian" / suite
    inrelease = fetch(f"{MIRROR}/dists/{suite}/InRelease", work / "InRelease")
    release = work / "Release"
    release.unlink(missing_ok=True)
    run(["gpgv", "--quiet", "--keyring", KEYRING, "--output", release, inrelease], log=work / "gpgv.log",
        hint="install debian-archive-keyring (its keys sign the archive)")
    # This mirror's binary-all index does not match its Release file; the host architecture's does.
    host = facts.ARCHES[facts.arch_of_machine(platform.machine())]["debian"]
    index = f"main/binary-{host}/Packages.xz"
    entry = next((line.split() for line in release.read_text().splitlines()
                  if line.startswith(" ") and line.split()[-1] == index and len(line.split()[0]) == 64), None)
    if entry is None:
        raise StepError(f"{suite}'s Release file lists no {index}")
    packages = lzma.decompress(fetch(f"{MIRROR}/dists/{suite}/{index}", work / "Packages.xz", entry[0]).read_bytes())
    stanza = next((block for block in packages.decode().split("\n\n") if f"Package: {name}\n" in block + "\n"), None)
    if stanza is None:
        raise StepError(f"no package {name} in {suite}")
    fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and not line.startswith(" "))
    deb = CACHE / "debian" / Path(fields["Filename"]).name
    return deb if deb.exists() else fetch(f"{MIRROR}/{fields['Filename']}", deb, fields["SHA256"])


def mkosi() -> list[str]:
    """The argv prefix that runs mkosi from trixie's package, without touching the host's packages."""
    deb = debian_package("mkosi", MKOSI_SUITE)
    tree = CACHE / "tools" / deb.stem
    if not (tree / "usr/lib/python3/dist-packages/mkosi").is_dir():
        tree.mkdir(parents=True, exist_ok=True)
        run(["dpkg-deb", "-x", deb, tree])
    return [sys.executable, "-B", "-c", "import sys; sys.path.insert(0, sys.argv.pop(1)); "
            "from mkosi.__main__ import main; main()", tree / "usr/lib/python3/dist-packages"]
