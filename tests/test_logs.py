"""Log lines carry their syslog priority under systemd, so `journalctl -p err` finds the errors."""

import logging
import subprocess
import sys

import pytest

from appliance import logs



def record(level: int, message: str) -> logging.LogRecord:
    return logging.LogRecord("paladin", level, __file__, 1, message, None, None)


@pytest.mark.unit
def test_each_line_carries_its_priority_under_journald(monkeypatch):
    monkeypatch.setenv("JOURNAL_STREAM", "8:1234")
    formatter = logs.formatter()
    assert formatter.format(record(logging.ERROR, "the model could not be loaded")) == \
        "<3>paladin: the model could not be loaded"
    assert formatter.format(record(logging.WARNING, "w")).startswith("<4>")
    assert formatter.format(record(logging.INFO, "two\nlines")) == "<6>paladin: two\n<6>lines"


@pytest.mark.unit
def test_a_terminal_gets_plain_lines(monkeypatch):
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    assert logs.formatter().format(record(logging.ERROR, "x")) == "ERROR paladin: x"


@pytest.mark.system
def test_the_updater_reports_failures_as_errors(tmp_path):
    out = subprocess.run([sys.executable, "-c", "from appliance.update.cli import main; main()", "install",
                          "--state", str(tmp_path / "state"), str(tmp_path / "no-such-repository")],
                         capture_output=True, text=True, env={"JOURNAL_STREAM": "8:1", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 1
    assert out.stderr.startswith("<3>paladin-update: "), out.stderr
