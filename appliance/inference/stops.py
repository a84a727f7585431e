"""Stop strings: found across token boundaries in time linear in the generated text."""

from __future__ import annotations

# Far beyond any real stop sequence (chat templates use a few characters); a bound keeps a request
# from making the only engine scan megabytes per token.
MAX_STOPS, MAX_STOP_CHARS = 16, 256


def _failure(stop: str) -> list[int]:
    """Knuth-Morris-Pratt: for each prefix of `stop`, the length of its longest proper border."""
    table, k = [0] * len(stop), 0
    for i in range(1, len(stop)):
        while k and stop[i] != stop[k]:
            k = table[k - 1]
        if stop[i] == stop[k]:
            k += 1
        table[i] = k
    return table


class StopScanner:
    """Finds stop strings across token boundaries, holding back only what could still start one.

    One automaton per stop string (KMP), fed each character once: the cost per token is linear in
    its text, whatever was generated before and however long the stop strings are.
    """

    def __init__(self, stops: tuple[str, ...]):
        self.stops = [s for s in stops if s]
        self.tables = [_failure(s) for s in self.stops]
        self.matched = [0] * len(self.stops)  # per stop: how much of it the text now ends with
        self.held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        for i, char in enumerate(text):
            for n, stop in enumerate(self.stops):
                k = self.matched[n]
                while k and stop[k] != char:
                    k = self.tables[n][k - 1]
                k = k + 1 if stop[k] == char else 0
                if k == len(stop):
                    emitted = self.held + text[:i + 1]
                    self.held = ""
                    return emitted[:len(emitted) - len(stop)], True
                self.matched[n] = k
        buf = self.held + text
        keep = max(self.matched, default=0)
        self.held = buf[len(buf) - keep:] if keep else ""
        return buf[:len(buf) - keep], False
