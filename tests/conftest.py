"""Shared fixtures: generated and real models, and a real running service."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from appliance import tinymodel

ROOT = Path(__file__).resolve().parents[1]
PALADIN = Path(sys.executable).parent / "paladin"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return tinymodel.write(tmp_path_factory.mktemp("models") / "tiny.gguf", "small")


@pytest.fixture(scope="session")
def smollm2_model() -> Path:
    sys.path.insert(0, str(ROOT))
    from build import smollm2

    return smollm2()


@pytest.fixture(scope="session")
def release_keys(tmp_path_factory) -> Path:
    """Signing keys made for this test run; every image built here trusts their root."""
    from vm import run_build

    keys = tmp_path_factory.mktemp("release") / "keys"
    run_build(ROOT / "build.py", "keys", "init", "--keys", keys)
    return keys


@pytest.fixture(scope="session")
def build_image(tmp_path_factory, tiny_model, release_keys):
    """build_image(version, extra_tree=None): the x86-64 image, built once per version and tree."""
    from vm import build_image

    built: dict = {}

    def build(version: str, extra_tree: Path | None = None) -> dict:
        if (version, extra_tree) not in built:
            out = tmp_path_factory.mktemp(f"image-{version}")
            built[version, extra_tree] = build_image(version, out, tiny_model, release_keys, extra_tree=extra_tree)
        return built[version, extra_tree]

    return build


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def create_token(data_dir: Path, name: str = "test") -> str:
    out = subprocess.run([PALADIN, "token", "create", "--data-dir", data_dir, "--name", name],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


class Service:
    """`paladin serve` as a child process, with a notify socket standing in for systemd's."""

    def __init__(self, model: Path, data_dir: Path, extra_env: dict | None = None):
        self.data_dir = data_dir
        self.token = create_token(data_dir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.notify_path = data_dir / "notify.sock"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        self.messages: list[str] = []
        threading.Thread(target=self._listen, daemon=True).start()  # drain it, as systemd does
        self.log = (data_dir / "service.log").open("w+")
        env = os.environ | {"NOTIFY_SOCKET": str(self.notify_path)} | (extra_env or {})
        self.process = subprocess.Popen(
            [PALADIN, "serve", "--model", model, "--data-dir", data_dir, "--listen", f"127.0.0.1:{self.port}",
             "--config", data_dir / "none.yaml"],
            env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.wait_ready()

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def _listen(self) -> None:
        while True:
            data = self.notify.recv(4096)
            if not data:  # shut down by stop()
                return
            self.messages += data.decode().splitlines()

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"service exited with {self.process.returncode}:\n{self.output()}")
            if "READY=1" in self.messages:
                return
            time.sleep(0.05)
        raise RuntimeError(f"service not ready after {timeout} s:\n{self.output()}")

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=60,
                            **kwargs)

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=60)
        time.sleep(0.1)  # let the listener take the last datagrams
        self.notify.shutdown(socket.SHUT_RDWR)
        self.notify.close()
        return code


@pytest.fixture(scope="session")
def service(tiny_model, tmp_path_factory):
    running = Service(tiny_model, tmp_path_factory.mktemp("service"), {"WATCHDOG_USEC": "400000"})
    yield running
    running.stop()
