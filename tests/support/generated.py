"""A part of a doc that is generated from the code: what lies between its opening comment (and the blank line
after it) and its closing one, read to compare and written to bring it up to date."""

from __future__ import annotations

from pathlib import Path


class Generated:
    def __init__(self, doc: Path, begin: str, end: str):
        self.doc, self.begin, self.end = doc, begin, end

    def _bounds(self, text: str) -> tuple[int, int]:
        return text.index("\n\n", text.index(self.begin)) + 2, text.index(self.end)

    def read(self) -> str:
        text = self.doc.read_text()
        start, stop = self._bounds(text)
        return text[start:stop]

    def write(self, body: str) -> None:
        text = self.doc.read_text()
        start, stop = self._bounds(text)
        self.doc.write_text(text[:start] + body + "\n" + text[stop:])
