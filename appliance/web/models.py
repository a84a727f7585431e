"""The owner's models: what the store holds, and which one the box serves from now on.

A choice is made in two steps, in this order: the engine swaps to the model (`Engine.swap`: queued
ahead of waiting jobs, the job in flight finishes first, the old model comes back if the new one does
not load), and only then is it saved as `inference.model` in the owner's configuration, durably, so
the next start serves it.  A choice that failed is never saved; one that is saved is served.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import JSONResponse

from .. import config as config_module, store
from ..config import Config
from ..errors import InvalidRequest, ModelUnusable, UnknownModel
from ..inference.engine import Engine, model_id
from ..inference.llama import ModelError
from .auth import Identity, route
from .http import field, read_json

MAX_NAME_BYTES = 255  # one file name on ext4


async def listing(request: Request):
    config: Config = request.state.config
    served = request.state.engine.served
    return JSONResponse({"models": [
        {"name": name, "id": model_id(Path(name)), "size": size, "tier": store.tier_of(name),
         "served": served is not None and served.path == config.models_path / name}
        for name, size in store.installed(config.models_path).items()]})


def _chosen(config: Config, name: str) -> Path:
    """The store's file for `name`: a catalog tier's, or an installed GGUF named by its bare file name."""
    tier = store.tier_named(name)
    if tier is None and (len(name.encode()) > MAX_NAME_BYTES or not name.endswith(".gguf")
                         or name.startswith(".") or any(c in name for c in "/\\\0")):
        raise InvalidRequest("'model' is a catalog tier or the file name of an installed .gguf model, without "
                             f"directories, at most {MAX_NAME_BYTES} bytes; GET /models lists them", param="model")
    file = tier.file if tier else name
    if file not in store.installed(config.models_path):
        raise UnknownModel(f"'{name}' is not installed on this box; GET /models lists what is, 'paladin model "
                           "download' or 'paladin model import' adds one", param="model")
    return config.models_path / file


async def choose(request: Request):
    """PUT {"model": NAME}: serve NAME from the next request on, and after restarts."""
    config: Config = request.state.config
    engine: Engine = request.state.engine
    name = field(await read_json(request), "model", str, required=True)
    path = _chosen(config, name)
    try:
        await engine.swap(path)
    except ModelError as err:
        served = engine.model_id
        now = f"the box still serves '{served}'" if served else f"no model is loaded ({engine.reason})"
        raise ModelUnusable(f"'{name}' could not be loaded: {err}; {now}. Choose another model (GET /models) or "
                            "install this one again", param="model") from None
    # Swaps finish in the order they were asked for and nothing is awaited between a swap and its save,
    # so when owners' choices cross, the file names the one the engine switched to last.
    config_module.save_owner(config.data_path, {"inference": {"model": name}})
    return JSONResponse({"model": model_id(path), "choice": name})


routes = [
    route("/models", listing, needs=Identity.TOKEN, methods=["GET"]),
    route("/models/default", choose, needs=Identity.TOKEN, methods=["PUT"]),
]
