"""The owner's models: the catalog against this box's memory, downloads and uploads into the store, and
which model the box serves from now on.

A choice is made in two steps, in this order: the engine swaps to the model (`Engine.swap`: queued
ahead of waiting jobs, the job in flight finishes first, the old model comes back if the new one does
not load), and only then is it saved as `inference.model` in the owner's configuration, durably, so
the next start serves it.  A choice that failed is never saved; one that is saved is served.

A download runs in a thread of its own (`appliance.downloads`, one per app, one download at a time), so the
event loop never waits on the network or the disk; the page polls GET /models/download.  An upload streams
the request body into the store (`http.receive_file`) and is checked against the catalog's pin when the
catalog knows its file name, then proven in a child (`inference.probe`) before it is put in place: a file
that would crash llama.cpp is refused with the reason and never kept.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Callable

from starlette.requests import Request
from starlette.responses import JSONResponse

from .. import store
from ..catalog import HEADROOM, Catalog, Tier, fits
from ..config import Config
from ..downloads import Downloads
from ..errors import Conflict, InvalidRequest, ModelError, ModelUnusable, UnknownModel
from ..inference.engine import Engine
from ..inference.served import model_id
from ..speed import Calibration, Estimate
from ..store import StoreError
from .auth import Identity, page, route
from . import bodies
from .http import parse, read_json, receive_file
from .pages import render

MAX_NAME_BYTES = 255  # one file name on ext4
UPLOAD_PATH = "/models/upload"
# Beyond any GGUF a small box could load (a 70B model at 4 bits is about 40 GiB): the cap that ends a
# client's stream when the disk is larger still.
MODEL_MAX_BYTES = 64 * 2**30


def installed(request: Request) -> list[dict]:
    """The store's models; a catalog tier's with its licence, its memory at the box's context and its speed."""
    config: Config = request.state.config
    served = request.state.engine.served
    estimate = speed_here(request)
    return [{"name": name, "id": model_id(Path(name)), "size": size,
             "served": served is not None and served.path == config.data.models / name}
            | _as_tier(request.state.catalog.with_file(name), config.inference.context_tokens, estimate)
            for name, size in store.installed(config.data.models).items()]


def _as_tier(tier: Tier | None, context: int, estimate: Callable[[Tier], Estimate | None]) -> dict:
    if tier is None:
        return {"tier": None, "licence": None, "ram": None, "speed": None}
    return {"tier": tier.name, "licence": tier.licence, "ram": tier.ram(context), "speed": _speed(estimate(tier))}


def _speed(estimate: Estimate | None) -> dict | None:
    return estimate.as_dict() if estimate else None


def speed_here(request: Request) -> Callable[[Tier], Estimate | None]:
    """How fast each tier would write on this box (appliance/speed.py), scaled by what the served model's
    last long reply measured, when it is a tier."""
    catalog: Catalog = request.state.catalog
    decoded = request.state.metrics.decoded
    measured = catalog.with_file(decoded[0]) if decoded else None
    calibration = Calibration(measured.name, decoded[1], decoded[2]) if measured else None
    threads, table = request.state.engine.threads, request.state.speeds
    return lambda tier: table.estimate(tier.name, threads, calibration)


def engine_name(request: Request, name: str) -> str:
    """The name the engine knows for the model a client asks for: a catalog tier, named as the catalog or as
    Ollama's library names it (`qwen2.5:1.5b`), is its file's model id; any other name is as it is."""
    tier = request.state.catalog.named(name)
    return model_id(Path(tier.file)) if tier else name


def total_ram() -> int:
    """This box's memory, from sysconf: the service's sandbox (ProcSubset=pid) hides /proc/meminfo."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def catalog_fit(request: Request) -> dict:
    """The tiers against this box: what each needs at the box's context beside the rest of the box (the
    headroom and the governor's reserve), whether that fits, and the one a new owner is offered first."""
    config: Config = request.state.config
    ladder: Catalog = request.state.catalog
    present, box, context = store.installed(config.data.models), total_ram(), config.inference.context_tokens
    reserve, estimate = config.governor.memory_reserve(box), speed_here(request)
    offered = ladder.recommend(box, reserve, context, estimate)
    return {"box_ram": box, "headroom": HEADROOM, "reserve": box * reserve // 100, "context": context,
            "recommended": {"tier": offered.tier and offered.tier.name, "why": offered.why},
            "speed_measured_on": request.state.speeds.machine, "tiers": [
                {"name": t.name, "ollama": t.ollama, "file": t.file, "size": t.size, "licence": t.licence,
                 "tools": t.has_tools, "context": t.context, "ram": t.ram(context),
                 "needs": t.ram(context) + HEADROOM + box * reserve // 100, "fits": fits(t, box, reserve, context),
                 "speed": _speed(estimate(t)), "installed": t.file in present, "recommended": t == offered.tier}
                for t in ladder.tiers]}


def overview(request: Request) -> dict:
    """What a page about the box's models shows: the installed ones, and the catalog against this box."""
    fit = catalog_fit(request)
    return {"installed": installed(request), "catalog": fit["tiers"], "ram": fit["box_ram"],
            "recommended": fit["recommended"], "speed_measured_on": fit["speed_measured_on"]}


async def listing(request: Request):
    return JSONResponse({"models": installed(request)})


async def catalog(request: Request):
    return JSONResponse(catalog_fit(request))


async def download_status(request: Request):
    return JSONResponse(request.state.downloads.status())


async def stop_download(request: Request):
    """DELETE: stop the download that runs; what arrived is kept, and starting it again resumes it."""
    if not request.state.downloads.stop():
        raise Conflict("no download is running", param="tier")
    return JSONResponse({"stopping": request.state.downloads.status()["tier"]}, status_code=202)


async def download(request: Request):
    """POST {"tier": NAME}: fetch a catalog tier in the background (202), or nothing when it is there (200)."""
    name = parse(bodies.Download, await read_json(request)).tier
    tier = request.state.catalog.named(name)
    if tier is None:
        raise UnknownModel(request.state.catalog.unknown(name), param="tier")
    downloads: Downloads = request.state.downloads
    started = downloads.start(tier, request.state.config.data.models)
    return JSONResponse(downloads.status(), status_code=202 if started else 200)


def _bare_gguf(name: str) -> bool:
    """A GGUF named by its bare file name: no directories, not hidden, printable, one ext4 name long."""
    return (name.isprintable() and len(name.encode()) <= MAX_NAME_BYTES and name.endswith(".gguf")
            and not name.startswith(".") and not any(c in name for c in "/\\"))


async def upload(request: Request):
    """PUT ?name=FILE.gguf with the file as the body: a model from the owner's computer into the store."""
    config: Config = request.state.config
    name = request.query_params.get("name", "")
    if not _bare_gguf(name):
        raise InvalidRequest("?name= is the model's file name: ending in .gguf, without directories, not starting "
                             f"with a dot, at most {MAX_NAME_BYTES} bytes", param="name")
    if name in store.installed(config.data.models):
        raise Conflict(f"'{name}' is installed already; choose it (PUT /models/default), or upload this file "
                       "under another name", param="name")
    tier = request.state.catalog.with_file(name)
    config.data.models.mkdir(parents=True, exist_ok=True)
    def usable(partial: Path) -> None:  # llama.cpp may abort on a malformed file: never in this process
        if (proofs := request.state.proofs) is None:
            return
        try:
            proofs.prove(partial, config.inference.cpu_variant, name=name)
        except ModelError as err:
            raise ModelUnusable(f"{name} cannot be used: {err}. Nothing was kept", param="name") from None

    received = await receive_file(request, config.data.models / name, what="a GGUF model", magic=b"GGUF",
                                  max_bytes=MODEL_MAX_BYTES, sha256=tier.sha256 if tier else None, check=usable)
    return JSONResponse({"name": name, "id": model_id(Path(name)), "size": received.size,
                         "sha256": received.sha256, "tier": tier.name if tier else None}, status_code=201)


def _chosen(request: Request, name: str) -> Path:
    """The store's file for `name`: a catalog tier's, or an installed GGUF named by its bare file name."""
    config: Config = request.state.config
    tier = request.state.catalog.named(name)
    if tier is None and not _bare_gguf(name):
        raise InvalidRequest("'model' is a catalog tier or the file name of an installed .gguf model, without "
                             f"directories, at most {MAX_NAME_BYTES} bytes; GET /models lists them", param="model")
    file = tier.file if tier else name
    if file not in store.installed(config.data.models):
        raise UnknownModel(f"'{name}' is not installed on this box; GET /models lists what is, 'paladin model "
                           "download' or 'paladin model import' adds one", param="model")
    return config.data.models / file


async def serve(request: Request, name: str) -> Path:
    """Serve the installed model `name` from the next request on, and after restarts."""
    engine: Engine = request.state.engine
    path = _chosen(request, name)
    try:
        await engine.swap(path)
    except ModelError as err:
        served = engine.model_id
        now = f"the box still serves '{served}'" if served else f"no model is loaded ({engine.reason})"
        raise ModelUnusable(f"'{name}' could not be loaded: {err}; {now}. Choose another model (GET /models) or "
                            "install this one again", param="model") from None
    # Swaps finish in the order they were asked for and nothing is awaited between a swap and its save,
    # so when owners' choices cross, the file names the one the engine switched to last.
    request.state.live.save({"inference": {"model": name}})
    request.state.governed.choose(path)
    return path


async def choose(request: Request):
    """PUT {"model": NAME}: serve NAME from the next request on, and after restarts."""
    name = parse(bodies.ModelChoice, await read_json(request)).model
    path = await serve(request, name)
    return JSONResponse({"model": model_id(path), "choice": name})


def _default_file(config: Config) -> str | None:
    """The store's file that `inference.model` names (what a restart serves), if it names one."""
    if not config.inference.model:
        return None
    try:
        path = store.configured_model(config)
    except StoreError:  # a tier the catalog no longer has: it names no file of the store
        return None
    return path.name if path is not None and path.parent == config.data.models else None


async def delete(request: Request):
    """DELETE /models/NAME.gguf: an installed model the box neither serves nor is configured to serve."""
    config: Config = request.state.config
    name = request.path_params["name"]
    if not _bare_gguf(name):
        raise InvalidRequest("name the model by its file name: ending in .gguf, without directories, not starting "
                             f"with a dot, at most {MAX_NAME_BYTES} bytes; GET /models lists them", param="name")
    if name not in store.installed(config.data.models):
        raise UnknownModel(f"'{name}' is not installed on this box; GET /models lists what is", param="name")
    await remove(request, name)
    return JSONResponse({"deleted": name})


async def remove(request: Request, name: str) -> None:
    """Delete the installed model file `name` unless the box serves it, is switching to it, or serves it
    after a restart."""
    config: Config = request.state.config
    if request.state.engine.uses(config.data.models / name):
        raise Conflict(f"'{name}' is the model the box serves (or is switching to): choose another one first "
                       "(PUT /models/default), then delete this one", param="name")
    if name == _default_file(config):
        raise Conflict(f"'{name}' is the model the box serves after a restart (inference.model): choose another "
                       "one first (PUT /models/default), then delete this one", param="name")
    try:
        await asyncio.to_thread(store.remove, config.data.models, name)
    except FileNotFoundError:  # deleted by a request that crossed this one
        raise UnknownModel(f"'{name}' is not installed on this box any more; GET /models lists what is",
                           param="name") from None


async def models_page(request: Request):
    config: Config = request.state.config
    return render(request, "models.html", overview(request) | {
        "engine": request.state.engine.status(), "default": _default_file(config), "upload_path": UPLOAD_PATH,
        "free": store_free(config)})


def store_free(config: Config) -> int | None:
    """Bytes free on the partition that holds the store (its data partition), or None before it exists."""
    try:
        return shutil.disk_usage(config.data.models if config.data.models.is_dir() else config.data_path).free
    except OSError:
        return None


# The owner's, from the browser or with a token; during setup, the wizard's model step uses them too.
MANAGERS = (Identity.OWNER, Identity.TOKEN, Identity.SETUP)
routes = [
    route("/models", listing, needs=MANAGERS, methods=["GET"]),
    route("/models/default", choose, needs=MANAGERS, methods=["PUT"]),
    route("/models/catalog", catalog, needs=MANAGERS, methods=["GET"]),
    route("/models/download", download_status, needs=MANAGERS, methods=["GET"]),
    route("/models/download", download, needs=MANAGERS, methods=["POST"]),
    route("/models/download", stop_download, needs=MANAGERS, methods=["DELETE"]),
    route(UPLOAD_PATH, upload, needs=MANAGERS, methods=["PUT"]),
    # {name:path}: a name with a slash reaches the handler, to be refused with a reason rather than a bare 404.
    route("/models/{name:path}", delete, needs=(Identity.OWNER, Identity.TOKEN), methods=["DELETE"]),
    page("/manage/models", models_page),
]
