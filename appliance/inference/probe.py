"""A model file and a CPU variant, proven in a short-lived child before the worker maps either.

llama.cpp aborts its whole process on some malformed GGUF files (a GGML_ASSERT at the first decode), and
a CPU can report instructions it then faults on (AMX on an Intel Xeon VM: SIGILL at the first quantized
matrix product).  Either would kill the web worker, and gunicorn would start it again into the same
crash.  So before the worker loads a model, `python -m appliance.inference.probe MODEL VARIANT` loads it
in a child and decodes a prompt (the batched kernels) and one token (the single-token ones) on the variant
the worker is to use.  A child killed by SIGILL condemns the variant, and the next best is tried; any
other failure condemns the file, and its owner is told why.

What was proven is kept in the data directory (`Proofs`): the variant for this CPU and this llama.cpp
build (their fingerprint), and each model file proven with it (name, size, time), so a restart loads at
once, while an update of llama.cpp or another CPU proves again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .. import files
from ..errors import ModelError
from .llama import Model, load_backends, plugin_dirs, ranked_variants, scores

log = logging.getLogger(__name__)
PROMPT = "The box on the shelf answers its owner, and nobody else. " * 8  # about a hundred tokens
# Loading a few GB from an SD card and decoding the prompt on a Pi's slowest variant fit in this.
DEADLINE = 600
MAX_PROVEN = 64  # model files remembered; more than any box's store holds


def fingerprint() -> str:
    """What the CPU reports as each variant scores it (ggml reads the CPU's feature flags; the service's
    sandbox hides /proc/cpuinfo) and this llama.cpp build's libraries: a proof holds while both do."""
    libraries = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for d in plugin_dirs() for p in sorted(d.glob("*.so"))]
    return hashlib.sha256(json.dumps([scores(), libraries]).encode()).hexdigest()[:32]


class Faulted(Exception):
    """The variant does not run on this CPU: the child died of SIGILL (instructions the CPU reports but does
    not run), or the variant's own check of the CPU refused it (a CPU other than the one it was ranked on)."""


@dataclass
class Proofs:
    """The proofs kept in `path` (JSON).  `launcher` is put before the child's command line (the tests run
    it under an emulated CPU)."""

    path: Path
    launcher: tuple[str, ...] = ()

    def _read(self) -> dict:
        try:
            record = json.loads(self.path.read_text())
        except (OSError, ValueError):  # none yet, or torn by hand: prove again
            return {}
        return record if isinstance(record, dict) and isinstance(record.get("models"), dict) else {}

    def current(self) -> dict:
        """The variant proven on this CPU and build, and why ({} before any proof)."""
        record = self._read()
        return record if record.get("fingerprint") == fingerprint() else {}

    def prove(self, model: Path, setting: str = "", name: str | None = None) -> str:
        """The CPU variant to load `model` with, once it has decoded a prompt on it in a child.  `setting`
        (inference.cpu_variant) names one; otherwise the one proven on this CPU before, else the best one
        that runs.  `name`: the file's name in the store, when `model` is still on its way there.  Raises
        ModelError, naming the reason, when the file cannot be used."""
        name = name or model.name
        stamp = [model.stat().st_size, model.stat().st_mtime_ns]
        record = self.current() or {"fingerprint": fingerprint(), "models": {}}
        proven = record.get("variant")
        if (not setting or setting == proven) and proven and record["models"].get(name) == stamp:
            return proven
        ranked = [setting] if setting else ranked_variants()
        if not setting and proven in ranked:
            ranked = ranked[ranked.index(proven):]
        faulted = []
        for variant in ranked:
            try:
                self._child(model, variant)
            except Faulted as fault:
                log.warning("llama.cpp's %s CPU variant %s here", variant, fault)
                faulted.append(f"{variant} {fault}")
                continue
            break
        else:
            hint = " Clear inference.cpu_variant to let the box choose." if setting else ""
            raise ModelError(f"no CPU variant of this llama.cpp build runs here: {', '.join(faulted)}.{hint}")
        if variant != proven:
            why = ("named by inference.cpu_variant" if setting else
                   f"the best one that runs here ({', '.join(faulted)})" if faulted else "the best this CPU reports")
            record = {"fingerprint": record["fingerprint"], "variant": variant, "why": why, "models": {}}
            log.info("llama.cpp CPU variant %s: %s (proven on %s)", variant, why, name)
        models = record["models"]
        models.pop(name, None)
        models[name] = stamp
        record["models"] = dict(list(models.items())[-MAX_PROVEN:])
        try:
            files.write(self.path, json.dumps(record).encode(), mode=0o600)
        except OSError as err:  # a full disk costs a proof at the next load, nothing more
            log.warning("could not remember the proof of %s: %s", name, err)
        return variant

    def _child(self, model: Path, variant: str) -> None:
        argv = [*self.launcher, sys.executable, "-m", __name__, str(model), variant]
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPENBLAS_")} | {"GGML_NO_BACKTRACE": "1"}
        try:
            done = subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=DEADLINE, env=env)
        except subprocess.TimeoutExpired:
            raise ModelError(f"loading it and reading a prompt took over {DEADLINE} s") from None
        if done.returncode == -signal.SIGILL:
            raise Faulted("died of SIGILL")
        if done.returncode == REFUSED:
            raise Faulted("refused this CPU")
        if done.returncode == 0:
            return
        said = [line for line in done.stderr.splitlines() if "GGML_ASSERT" in line or "Error" in line or
                "error" in line]
        detail = f": {said[-1].strip()[:300]}" if said else ""
        if done.returncode < 0:
            raise ModelError(f"llama.cpp crashed on it ({signal.Signals(-done.returncode).name}){detail}; the file "
                             "is damaged or of a kind this build cannot run")
        raise ModelError(f"it could not be loaded{detail}")


REFUSED = 3  # the child's exit status when the variant's own check refused this CPU


def main(argv: list[str] | None = None) -> None:
    """The child: load the variant and the model, decode the prompt and one more token."""
    path, variant = argv or sys.argv[1:]
    try:
        load_backends(variant)
    except ModelError as err:
        print(err, file=sys.stderr)
        sys.exit(REFUSED)
    try:
        model = Model(Path(path), threads=1, context_tokens=256, cpu_variant=variant)
        tokens = model.tokenize(PROMPT)[:200]
        model.prefill(tokens)
        model.advance(tokens[-1])
    except ModelError as err:
        sys.exit(f"Error: {err}")


if __name__ == "__main__":
    main()
