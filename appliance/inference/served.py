"""The model being served as everything outside the inference thread sees it: a snapshot taken when it was
loaded (`Served`; the thread frees llama.cpp's handles during a swap), how it is run (`Strength`), and the
id a model file gives it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Served:
    """The loaded model as request handlers may see it."""
    id: str
    path: Path
    size_bytes: int
    context_tokens: int
    parameters: int
    architecture: str
    file_type: str
    template: str
    threads: int


@dataclass(frozen=True)
class Strength:
    """How a model is run: the resource governor's graded rungs lower these before it picks a smaller model."""
    threads: int
    context_tokens: int

def model_id(path: Path) -> str:
    return Path(path).stem.lower()
