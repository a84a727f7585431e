"""Log lines that journald files under their priority.

Under systemd (JOURNAL_STREAM is set) every line starts with its syslog priority, `<3>` for an error
(sd-daemon(3)), so `journalctl -p err` finds the errors; on a terminal lines read as usual.  The
service, gunicorn's own lines and paladin-update all log through here.
"""

from __future__ import annotations

import logging
import os

PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


class JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{PRIORITY.get(record.levelno, 6)}>"
        # journald reads each line on its own: a traceback's every line keeps the record's priority
        return "\n".join(prefix + line for line in super().format(record).splitlines())


def formatter() -> logging.Formatter:
    if os.environ.get("JOURNAL_STREAM"):
        return JournalFormatter("%(name)s: %(message)s")
    return logging.Formatter("%(levelname)s %(name)s: %(message)s")


def setup(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(formatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
