"""Service metrics, rendered as Prometheus text (one worker process, so plain attributes suffice)."""

from __future__ import annotations

from collections import Counter


def _label(value: str) -> str:
    """A label value as the exposition format escapes it: no line or quote can break out."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    def __init__(self) -> None:
        self.requests: Counter[tuple[str, int]] = Counter()
        self.queue_depth = 0
        self.model_loaded = 0
        self.tokens_generated = 0
        self.generation_seconds = 0.0
        self.last_tokens_per_second = 0.0
        self.prompt_tokens_dropped = 0
        # The served model's file, its threads and how many tokens a second it wrote, as last measured on a
        # reply long enough to tell (Engine): what estimates of the other models' speed are scaled by.
        self.decoded: tuple[str, int, float] | None = None

    def request(self, route: str, status: int) -> None:
        self.requests[route, status] += 1

    def finished(self, tokens: int, seconds: float) -> None:
        self.tokens_generated += tokens
        self.generation_seconds += seconds
        if tokens and seconds > 0:
            self.last_tokens_per_second = tokens / seconds

    def render(self, gauges: dict[str, float] | None = None) -> str:
        """The exposition text, with `gauges` (name, labels included, to value) from outside the worker."""
        lines = [
            "# HELP paladin_requests_total HTTP requests by route and status.",
            "# TYPE paladin_requests_total counter",
        ]
        lines += [f'paladin_requests_total{{route="{_label(route)}",status="{status}"}} {n}'
                  for (route, status), n in sorted(self.requests.items())]
        for name, kind, value, help in (
            ("queue_depth", "gauge", self.queue_depth, "Requests waiting for the model."),
            ("model_loaded", "gauge", self.model_loaded, "1 while a model is loaded."),
            ("tokens_generated_total", "counter", self.tokens_generated, "Tokens generated."),
            ("generation_seconds_total", "counter", self.generation_seconds, "Time spent generating."),
            ("tokens_per_second", "gauge", self.last_tokens_per_second, "Speed of the last generation."),
            ("prompt_tokens_dropped_total", "counter", self.prompt_tokens_dropped,
             "Prompt tokens of the oldest messages left out to fit the context."),
        ):
            lines += [f"# HELP paladin_{name} {help}", f"# TYPE paladin_{name} {kind}", f"paladin_{name} {value}"]
        for name, value in (gauges or {}).items():
            lines.append(f"paladin_{name} {value}")
        return "\n".join(lines) + "\n"
