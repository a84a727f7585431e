"""Verb tables: each command line (`build.py`, `paladin`, `paladin-update`) is one table of verbs, each
with its handler, its help and its arguments as data, turned into one argparse parser here.

Standard library only: `build.py` uses it before any virtual environment exists.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable


def arg(*names: str, **options: Any) -> tuple[tuple[str, ...], dict[str, Any]]:
    """One `add_argument` call, as data."""
    return names, options


@dataclass(frozen=True)
class Verb:
    run: Callable
    help: str
    arguments: tuple = ()


def verb(run: Callable, help: str, *arguments) -> Verb:
    return Verb(run, help, arguments)


def parser(prog: str, description: str, verbs: dict[str, Verb], common: tuple = ()) -> argparse.ArgumentParser:
    """The parser of a verb table; `common` arguments are added to every verb.  `args.verb` names the verb."""
    top = argparse.ArgumentParser(prog=prog, description=description,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = top.add_subparsers(dest="verb", required=True)
    for name, spec in verbs.items():
        p = sub.add_parser(name, help=spec.help, description=spec.help)
        for names, options in (*common, *spec.arguments):
            p.add_argument(*names, **options)
    return top
