"""What the runs against real client apps (`homeassistant`, `openwebui`) share: the box they talk to, and
the record of each step as a new owner would judge it."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from buildhost.steps import StepError, run, say
from buildhost.wheels import smollm2
from tests.support.catalog import served_catalog
from tests.support.served import UNLIMITED, Service, create_token
from tests.support.variants import working_variant
from appliance.layout import DataDir

SERVED = "smollm2-tools"
TEMPLATE = Path(__file__).parents[1] / "templates/qwen2.5.jinja"
TIER = "helper"  # the catalog tier the box can download, from 127.0.0.1


def expect(results: dict, name: str, seen, ok: bool, want: str) -> None:
    """Record what a step showed; stop the run at the first one that is not what its owner would expect."""
    results[name] = seen
    say(f"{name}: {'as expected' if ok else 'NOT as expected'}: {json.dumps(seen)[:600]}")
    if not ok:
        raise StepError(f"{name}: expected {want}")


def tools_model(dest: Path) -> Path:
    """SmolLM2 (a ChatML model, like Qwen) with Qwen 2.5's chat template, which offers tools: the real small
    model as a tool-capable model would be served."""
    run([sys.executable, "-m", "gguf.scripts.gguf_new_metadata", "--chat-template-file", TEMPLATE,
         "--general-name", "SmolLM2 135M, Qwen 2.5 template", smollm2(), dest], log=dest.with_suffix(".log"))
    return dest


@contextlib.contextmanager
def box(client: str):
    """The real service serving `smollm2-tools`, with plain SmolLM2 installed beside it and a catalog whose
    one tier is served from 127.0.0.1; yields it and a token named for `client`."""
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        models = DataDir(data).models
        models.mkdir()
        shutil.copy(smollm2(), models / "smollm2.gguf")
        tools_model(models / f"{SERVED}.gguf")
        variant = working_variant(models / "smollm2.gguf")
        with served_catalog(data, models / "smollm2.gguf", TIER) as catalog:
            # Home Assistant asks for 8192 tokens of context; its prompt with tools is about 1 700 of SmolLM2's.
            service = Service(None, data, system={"paths": {"catalog": str(catalog)}}, config=UNLIMITED | {
                "inference": {"model": f"{SERVED}.gguf", "cpu_variant": variant, "context_tokens": 8192}})
            try:
                yield service, create_token(data, client)
            finally:
                service.stop()


class App:
    """A client app in a session of its own, its output in a log, answering HTTP on 127.0.0.1:`port`."""

    def __init__(self, name: str, argv: list, port: int, log_path: Path, ready: str, env: dict | None = None,
                 timeout: float = 900):
        self.name, self.port, self.log_path = name, port, log_path
        self.log = log_path.open("w")
        self.process = subprocess.Popen(argv, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600)  # a turn may run tools
        deadline = time.monotonic() + timeout  # a first start may install requirements
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise StepError(f"{name} exited with {self.process.returncode}; see {log_path}")
            with contextlib.suppress(httpx.HTTPError):
                if self.http.get(ready).status_code == 200:
                    return
            time.sleep(2)
        self.stop()
        raise StepError(f"{name} did not answer within {timeout:.0f} s; see {log_path}")

    def ok(self, response: httpx.Response):
        if response.status_code >= 400:
            raise StepError(f"{self.name} answered {response.status_code} to {response.request.method} "
                            f"{response.request.url.path}: {response.text[:500]}")
        return response.json()

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def logged(self, text: str, since: int = 0, timeout: float = 20) -> str:
        """The first line of the app's log after line `since` that holds `text` ("" if none comes): an
        app logs an error as it answers, and its output reaches the file a little later."""
        deadline = time.monotonic() + timeout
        while True:
            found = next((line for line in self.output().splitlines()[since:] if text in line), "")
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.5)

    def __enter__(self) -> App:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        """Everything the app started goes too (hass runs under unshare, sh and chroot, which a signal to
        the first would not reach)."""
        for sig, wait in ((signal.SIGTERM, 60), (signal.SIGKILL, 10)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            try:
                self.process.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        self.log.close()


def results_file(doc: str) -> Path | None:
    """The run's one option, --json FILE."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args().json


def report(results: dict, out: Path | None) -> None:
    print(json.dumps(results, indent=2))
    if out:
        out.write_text(json.dumps(results, indent=2) + "\n")
