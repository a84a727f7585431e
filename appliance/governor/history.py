"""The governor's bounded memory, kept across restarts: recent samples and a week of decisions.

SQLite in the governor's own state directory.  Decisions are written as they are taken; samples are
buffered and written once a minute in one transaction (a write a second would wear an SD card for
nothing), so a power cut loses at most the last minute of samples and never a decision.
"""

from __future__ import annotations

import json
import sqlite3
from collections import deque
from pathlib import Path

KEEP_SAMPLES = 2000
KEEP_DECISION_SECONDS = 7 * 86400
MAX_DECISIONS = 20000
RECENT = 10  # what every answer to the assistant carries  # a week of decisions at most every `dwell_seconds`; a bound all the same
SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (t REAL NOT NULL, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS decisions (t REAL NOT NULL, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS samples_t ON samples (t);
CREATE INDEX IF NOT EXISTS decisions_t ON decisions (t);
"""


class History:
    """`readonly`: for `paladin-governor history` as root, which must create no file the governor's user could
    not then open (a rollback journal, not WAL, for the same reason: a reader needs no -shm file)."""

    def __init__(self, path: Path, readonly: bool = False):
        if readonly:
            self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
        else:
            self.db = sqlite3.connect(path, isolation_level=None)
            self.db.executescript(SCHEMA)
        rows = self.db.execute("SELECT data FROM samples ORDER BY t DESC LIMIT ?", (KEEP_SAMPLES,)).fetchall()
        self.samples: deque[dict] = deque((json.loads(data) for (data,) in reversed(rows)), maxlen=KEEP_SAMPLES)
        self.unsaved: list[dict] = []
        self.recent: deque[dict] = deque(self.decisions(limit=RECENT), maxlen=RECENT)

    def add_sample(self, sample: dict) -> None:
        self.samples.append(sample)
        self.unsaved.append(sample)

    def add_decision(self, decision: dict) -> None:
        self.recent.append(decision)
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute("INSERT INTO decisions VALUES (?, ?)", (decision["t"], json.dumps(decision)))
            self.db.execute("DELETE FROM decisions WHERE t < ? OR rowid <= (SELECT max(rowid) FROM decisions) - ?",
                            (decision["t"] - KEEP_DECISION_SECONDS, MAX_DECISIONS))

    def flush(self) -> None:
        if not self.unsaved:
            return
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany("INSERT INTO samples VALUES (?, ?)", [(s["t"], json.dumps(s)) for s in self.unsaved])
            self.db.execute("DELETE FROM samples WHERE rowid <= (SELECT max(rowid) FROM samples) - ?",
                            (KEEP_SAMPLES,))
        self.unsaved = []

    def decisions(self, since: float = 0.0, limit: int = 1000) -> list[dict]:
        rows = self.db.execute("SELECT data FROM decisions WHERE t >= ? ORDER BY t DESC LIMIT ?",
                               (since, limit)).fetchall()
        return [json.loads(data) for (data,) in reversed(rows)]

    def close(self) -> None:
        self.flush()
        self.db.close()
