"""The real service (`paladin serve`) as a child process, for the service tests and the benchmarks."""

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
import psutil
import yaml

from appliance.layout import DataDir
from buildhost.qemu import free_port

PALADIN = Path(sys.executable).parent / "paladin"
# For tests and benchmarks that send many requests from 127.0.0.1 on purpose: they measure something else.
UNLIMITED = {"server": {"requests_per_second": 0, "auth_failures_per_minute": 0}}
SYSTEM = "system.yaml"  # the service's stand-in for the image's /etc/paladin/paladin.yaml


def serve_argv(data_dir: Path, port: int, https_port: int | None = None, model: Path | None = None,
               redirect_port: int | None = None) -> list:
    """`paladin serve` on 127.0.0.1 only: the plain API on `port`, HTTPS on `https_port` and the redirect to it
    on `redirect_port` (None: none; ports 443 and 80 are the box's)."""
    return [PALADIN, "serve", *(["--model", model] if model else []), "--data-dir", data_dir,
            "--listen", f"127.0.0.1:{port}", "--https", f"127.0.0.1:{https_port}" if https_port else "",
            "--redirect", f"127.0.0.1:{redirect_port}" if redirect_port else "", "--config", data_dir / SYSTEM]


def create_token(data_dir: Path, name: str = "test") -> str:
    out = subprocess.run([PALADIN, "token", "create", "--data-dir", data_dir, "--name", name],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def kill_9(process: subprocess.Popen) -> None:
    """The power cut of a process tree: the worker and the arbiter die at once, nothing is flushed."""
    for child in psutil.Process(process.pid).children(recursive=True):
        child.send_signal(signal.SIGKILL)
    process.send_signal(signal.SIGKILL)
    process.wait()


class Service:
    """`paladin serve` as a child process, with a notify socket standing in for systemd's.

    `model` None serves the configured one; `config`, when given, becomes the owner's config.yaml, and
    `system` the image's system file (where things are: `paths`)."""

    def __init__(self, model: Path | None, data_dir: Path, extra_env: dict | None = None, config: dict | None = None,
                 redirect_port: int | None = None, system: dict | None = None):
        self.data_dir = data_dir
        if config is not None:
            DataDir(data_dir).owner_config.write_text(yaml.safe_dump(config))
        (data_dir / SYSTEM).write_text(yaml.safe_dump(system or {}))
        self.token = create_token(data_dir)
        self.port, self.https_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.https_url = f"https://127.0.0.1:{self.https_port}"
        self.notify_path = data_dir / "notify.sock"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify_path.unlink(missing_ok=True)  # left by a service killed before on this data directory
        self.notify.bind(str(self.notify_path))
        self.messages: list[str] = []
        threading.Thread(target=self._listen, daemon=True).start()  # drain it, as systemd does
        self.log = (data_dir / "service.log").open("w+")
        env = os.environ | {"NOTIFY_SOCKET": str(self.notify_path)} | (extra_env or {})
        self.process = subprocess.Popen(
            serve_argv(data_dir, self.port, self.https_port, model, redirect_port),
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

    def with_sdks(self) -> "Service":
        """The service with the real `openai` and `ollama` clients on it, as Home Assistant and Open WebUI
        call it: `self.openai`, `self.ollama`."""
        import ollama
        import openai
        self.openai = openai.OpenAI(base_url=self.url + "/v1", api_key=self.token)
        self.ollama = ollama.Client(host=self.url, headers={"Authorization": f"Bearer {self.token}"})
        return self

    def choose(self, model: str) -> None:
        """Serve the installed `model` (a file name), as the Models page chooses it."""
        with self.client() as client:
            assert client.put("/models/default", json={"model": model}).status_code == 200

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=60)
        time.sleep(0.1)  # let the listener take the last datagrams
        self.notify.shutdown(socket.SHUT_RDWR)
        self.notify.close()
        return code
