"""Named steps, their errors, and the one wrapper through which the build host runs a program."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


class StepError(Exception):
    """A step failed: the message says what, the hint what to do about it (mkosi's `die` style)."""

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
        cwd: Path | None = None, stdin: str | None = None, hint: str = "") -> str:
    """Run one external program (argument list, never a shell string), `stdin` its input; raise StepError on
    failure."""
    argv = [str(a) for a in argv]
    if shutil.which(argv[0]) is None and not Path(argv[0]).exists():
        raise StepError(f"'{argv[0]}' is not installed", hint or f"install the package that provides {argv[0]}")
    merged = os.environ | (env or {})
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as out:
            result = subprocess.run(argv, env=merged, cwd=cwd, input=stdin, text=True, stdout=out,
                                    stderr=subprocess.STDOUT)
        if result.returncode != 0:
            tail = "".join(log.read_text().splitlines(keepends=True)[-25:])
            raise StepError(f"{argv[0]} exited with {result.returncode}; last lines of {log}:\n{tail}", hint)
        return ""
    result = subprocess.run(argv, env=merged, cwd=cwd, input=stdin, text=True,
                            stdout=subprocess.PIPE if capture else None)
    if result.returncode != 0:
        raise StepError(f"{' '.join(argv[:4])} ... exited with {result.returncode}", hint)
    return result.stdout if capture else ""


def existing_file(path: str | Path, what: str, hint: str = "") -> Path:
    """An input named on the command line, checked before any step runs."""
    resolved = Path(path).expanduser().resolve()
    if not resolved.is_file():
        raise StepError(f"{what} {path} does not exist or is not a file", hint)
    return resolved
