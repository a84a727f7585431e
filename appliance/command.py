"""The one way the appliance runs an external tool: argv in, stdout out, a specific error otherwise."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import time

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


def holding(secret: bytes) -> int:
    """The read end of a pipe already holding `secret` (small: it must fit the pipe) and closed for writing:
    a secret reaches a tool as /dev/fd/N (with pass_fds), never in a file or on its command line."""
    readable, writable = os.pipe()
    os.write(writable, secret)
    os.close(writable)
    return readable


def answered(argv: list, answers: list[str], *, pass_fds: tuple[int, ...] = (), timeout: float) -> str:
    """A tool that asks for secrets only on its terminal (age's passphrases): it runs in a session of its own
    whose controlling terminal is a pseudo-terminal, each of `answers` is typed there when it next asks (a
    prompt ending in ': '), and its output (a short one: it is read once the tool ends) is returned."""
    master, slave = pty.openpty()
    try:
        process = subprocess.Popen(["setsid", "--ctty", "--wait", *map(str, argv)], stdin=slave,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=pass_fds)
    except FileNotFoundError:
        raise CommandError("setsid is not installed") from None
    finally:
        os.close(slave)
    deadline, asked, pending = time.monotonic() + timeout, b"", list(answers)
    try:
        while process.poll() is None and time.monotonic() < deadline:
            if not select.select([master], [], [], 0.1)[0]:
                continue
            try:
                said_now = os.read(master, 1024)
            except OSError:  # EIO: the tool closed its terminal, it is ending
                break
            asked += said_now
            if pending and asked.rstrip(b" ").endswith(b":"):
                os.write(master, pending.pop(0).encode() + b"\n")
                asked = b""
        try:
            stdout, stderr = process.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise CommandError(f"{argv[0]} did not finish in {timeout:.0f} s") from None
    finally:
        os.close(master)
        if process.poll() is None:
            process.kill()
            process.wait()
    if process.returncode:
        said = stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise CommandError(f"{argv[0]} failed (exit {process.returncode}): {' / '.join(said) or 'no output'}")
    return stdout.decode()
