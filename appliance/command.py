"""The one way the appliance runs an external tool: argv in, stdout out, a specific error otherwise."""

from __future__ import annotations

import subprocess

class CommandError(RuntimeError):
    """A tool failed; the message names the tool, its exit status and what it said."""


def run(argv: list, *, check: bool = True, stdin: str | None = None, timeout: float | None = None) -> str:
    """`argv`'s output; `timeout` is for tools that must answer quickly (the long ones, such as writing a slot
    or waiting for a unit, are bounded by their unit's own timeout)."""
    try:
        done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, input=stdin, timeout=timeout)
    except FileNotFoundError:
        raise CommandError(f"{argv[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise CommandError(f"{argv[0]} did not finish in {timeout:.0f} s") from None
    if check and done.returncode:
        said = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise CommandError(f"{argv[0]} failed (exit {done.returncode}): {' / '.join(said) or 'no output'}")
    return done.stdout


def stream(argv: list, *, stdin, stdout, pass_fds: tuple[int, ...] = ()) -> subprocess.Popen:
    """A tool that works on a stream the caller feeds or reads as it goes (`stdin`, `stdout`: a file or
    subprocess.PIPE); `said` tells how it ended."""
    try:
        return subprocess.Popen([str(a) for a in argv], stdin=stdin, stdout=stdout, stderr=subprocess.PIPE,
                                pass_fds=pass_fds)
    except FileNotFoundError:
        raise CommandError(f"{argv[0]} is not installed") from None


def said(process: subprocess.Popen) -> str | None:
    """Wait for a streaming tool; None when it succeeded, else what it said on stderr (its last lines)."""
    stderr = process.stderr.read().decode(errors="replace")
    process.stderr.close()
    if process.wait() == 0:
        return None
    return " / ".join(stderr.strip().splitlines()[-3:]) or f"{process.args[0]} failed (exit {process.returncode})"
