"""docs/architecture.md's table of processes is derived from the code: which program each unit runs, as
which user (units/), and what each program imports (its entry point run in a fresh interpreter)."""

from __future__ import annotations

import configparser
import importlib
import pkgutil
import re
import runpy
import tomllib

import pytest

from buildhost import ROOT
from tests.support.closure import WORKER, loaded

pytestmark = pytest.mark.system

DOC = ROOT / "docs/architecture.md"
HEADER = "| program | run by | user | the box package it imports | of note |"
# Third-party imports a reader weighs: a process's memory, its attack surface, its privileges' worth.
NOTABLE = ("starlette", "gunicorn", "uvicorn", "llama_cpp", "numpy", "jinja2", "cryptography", "tuf", "urllib3",
           "psutil", "yaml")
PACKAGES = ("appliance", "buildhost")


def scripts() -> dict[str, str]:
    """Each program the box installs, and the module its entry point is in."""
    table = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    return {name: target.split(":")[0] for name, target in table.items()}


def runners() -> dict[str, list[tuple[str, str, str]]]:
    """Per program: (unit, verb, user) for every unit that runs it."""
    found: dict[str, list[tuple[str, str, str]]] = {}
    for path in sorted((ROOT / "units").glob("*.service")):
        unit = configparser.ConfigParser(strict=False, interpolation=None)
        unit.read_string(path.read_text())
        service = unit["Service"]
        if match := re.match(r"/usr/bin/(\S+)\s*(.*)", service.get("ExecStart", "")):
            program, verb = match.groups()
            found.setdefault(program, []).append((path.name, verb.strip(), service.get("User", "root")))
    return found


def described(modules: set[str]) -> tuple[str, str]:
    """What of the box package (and the build host's) `modules` holds, whole subpackages as `name/`;
    and the notable third-party packages among them."""
    parts = []
    for top in PACKAGES:
        ours = sorted(m.removeprefix(top + ".") for m in modules if m.startswith(top + "."))
        singles = [m for m in ours if "." not in m and not (ROOT / top / m).is_dir()]
        if singles:
            parts.append(f"`{top}`: {', '.join(singles)}")
        for package in (m for m in ours if "." not in m and (ROOT / top / m).is_dir()):
            every = sorted(info.name for info in pkgutil.iter_modules([str(ROOT / top / package)]))
            held = [m.split(".", 1)[1] for m in ours if m.startswith(package + ".") and m.count(".") == 1]
            parts.append(f"`{top}.{package}`: " + ("all" if held == every else ", ".join(held) or "(the package)"))
    notable = sorted({m.split(".")[0] for m in modules} & set(NOTABLE))
    return "; ".join(parts), ", ".join(notable) or "none"


def rows(data_dir) -> list[str]:
    units = runners()
    made = []
    for program, module in sorted(scripts().items()):
        by = units.get(program, [])
        run_by = ", ".join(f"`{unit}` ({verb})" if verb else f"`{unit}`" for unit, verb, _ in by) or "the root user"
        users = ", ".join(sorted({f"`{user}`" if user != "root" else "root" for _, _, user in by})) or "root"
        made.append(f"| `{program}` | {run_by} | {users} | " + " | ".join(
            described(loaded(f"import {module}", data_dir))) + " |")
    worker_user = next(user for unit, _, user in units["paladin"] if unit == "paladin.service")
    made.append(f"| the web worker (gunicorn's, forked by `paladin serve`) | `paladin.service` | `{worker_user}` | "
                + " | ".join(described(loaded(WORKER, data_dir))) + " |")
    made.append("| `build.py` | the developer | root (apt, binfmt, mkosi) | "
                + " | ".join(described(loaded("import runpy; runpy.run_path('build.py', run_name='build')",
                                              data_dir))) + " |")
    return made


def test_the_documented_processes_are_what_the_code_runs_and_imports(tmp_path):
    table = "\n".join([HEADER, "| --- | --- | --- | --- | --- |", *rows(tmp_path)])
    text = DOC.read_text()
    start = text.index(HEADER)
    documented = text[start:text.index("\n\n", start)]
    assert documented == table, f"docs/architecture.md's table of processes should read:\n\n{table}\n"


@pytest.mark.parametrize("program, verbs", [
    ("`build.py`", lambda: runpy.run_path(str(ROOT / "build.py"), run_name="build")["VERBS"]),
    ("`cli.py`", lambda: importlib.import_module("appliance.cli").VERBS),
])
def test_the_documented_verbs_are_the_programs_verbs(program, verbs):
    row = next(line for line in DOC.read_text().splitlines() if line.startswith(f"| {program} |"))
    documented = re.search(r"a verb table \(([^)]*)\)", row).group(1)
    assert sorted(re.findall(r"`([^`]+)`", documented)) == sorted(verbs())
