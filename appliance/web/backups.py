"""The owner's backups (docs/backups.md): the recovery kit, backing up now, the backups on the box and their
settings, and restoring one, from the box or uploaded (also in the setup wizard of a freshly flashed box,
behind its setup code, instead of making a new account).

Backups hold everything the owner has, so only the owner's login (or, before there is an owner, the setup
code) reaches them; an API token does not.  An uploaded backup streams through the pipe into the
restore's staging as it arrives (restore.stage): the encrypted file is never kept beside what it brings.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import secrets
from urllib.parse import unquote

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response

from .. import channel, files
from ..backup import contents, keys, restore, swap
from ..backup.archive import BackupError, NotEnoughSpace
from ..errors import Conflict, InvalidRequest, NoSpace, NotFound
from ..layout import StickState
from . import bodies
from .auth import Identity, page, route
from .http import parse, pour, read_json, save_settings
from .pages import render

log = logging.getLogger(__name__)
RESTORE_PATH = "/backups/restore"
KEY_HEADER = "X-Recovery-Key"
PASSPHRASE_HEADER = "X-Passphrase"  # percent-encoded (headers carry Latin-1 only): opens a sealed key
SEALED_HEADER = "X-Sealed-Key"  # the sealed key file in base64, when the box keeps none for the backup's key
NAME_HEADER = "X-Backup-Name"  # the uploaded file's name: it says which key the backup needs
MAX_BACKUP_BYTES = 1 << 40
SETTINGS = ("schedule", "identity", "models", "keep", "days")
MAX_STICKS_JSON = 1 << 20
RESTART_SECONDS = 0.5  # the confirmation's answer reaches the browser before the service stops


def _keys(request: Request) -> keys.Keys:
    return keys.Keys(request.state.config.data.device)


def _state(request: Request) -> dict:
    config = request.state.config
    current = _keys(request).current()
    sealed = config.data.sealed_key(keys.fingerprint_of(current)) if current else None
    return {"key": keys.fingerprint_of(current) if current else None,
            "sealed": sealed.name if sealed and sealed.is_file() else None,
            "backups": [{"name": made.name, "bytes": made.size, "created": made.created, "key": made.key}
                        for made in contents.listing(config.data)],
            "last": contents.last(config.data), "restore": restore.preview(config.data),
            "settings": {name: getattr(config.backup, name) for name in SETTINGS},
            "sticks": _sticks(config.data_path)}


def _sticks(data_dir) -> dict:
    """The USB sticks as the stick helper last saw them, how its last request ended, and whether one waits."""
    try:
        seen = json.loads(StickState().sticks.read_text()[:MAX_STICKS_JSON])
    except (FileNotFoundError, ValueError):
        seen = {"sticks": [], "outcome": None}
    return {"sticks": seen.get("sticks", []), "outcome": seen.get("outcome"),
            "pending": channel.pending(data_dir, "stick")}


async def look_for_sticks(request: Request):
    """Ask the stick helper to look for USB sticks (202; GET /backups shows what it found)."""
    channel.submit(request.state.config.data_path, channel.StickRequest("look"))
    return JSONResponse({"pending": True}, status_code=202)


async def copy_to_stick(request: Request):
    """Ask the stick helper to copy this backup onto the stick named (202; GET /backups shows the outcome)."""
    body = parse(bodies.StickChoice, await read_json(request))
    made = _made(request)
    channel.submit(request.state.config.data_path, channel.StickRequest("copy", body.stick, made.name))
    log.info("backups: %s to be copied to the USB stick %s", made.name, body.stick)
    return JSONResponse({"pending": True}, status_code=202)


async def status(request: Request):
    return JSONResponse(_state(request))


async def backups_page(request: Request):
    state = _state(request)
    proposed = None if state["key"] else await asyncio.to_thread(_kit, request)
    return render(request, "backups.html", {**state, "kit": proposed, "timezone": request.state.config.device.timezone,
                                            "restore_path": RESTORE_PATH})


def _kit(request: Request) -> dict:
    """The recovery kit of the proposed key: shown until its owner types a part of it back, never after."""
    import segno  # the QR code is drawn on the box, where only the kit needs it

    proposed = _keys(request).proposed()
    groups = keys.groups(str(proposed))
    return {"prefix": keys.PREFIX, "groups": groups, "fingerprint": keys.fingerprint_of(proposed),
            "ask": secrets.randbelow(len(groups)) + 1,
            "qr": segno.make(str(proposed), error="m").svg_inline(scale=4, title="The recovery key as a QR code")}


async def confirm_key(request: Request):
    body = parse(bodies.RecoveryKey, await read_json(request))
    try:
        confirmed = _keys(request).confirm(body.group - 1, body.typed)
    except keys.BadKey as err:
        raise InvalidRequest(str(err), param="typed") from None
    log.info("backups: the recovery key %s was confirmed", keys.fingerprint_of(confirmed))
    return JSONResponse({"key": keys.fingerprint_of(confirmed)})


async def renew_key(request: Request):
    """A new recovery kit to confirm (the current key stays until then, and opens the backups made with it)."""
    _keys(request).renew()
    return JSONResponse({"proposed": True}, status_code=201)


def _sealed_path(request: Request):
    current = _keys(request).current()
    if current is None:
        raise NotFound("this box has no recovery key yet: confirm the recovery kit first")
    return request.state.config.data.sealed_key(keys.fingerprint_of(current))


async def seal_key(request: Request):
    """Seal a copy of the recovery key with the owner's passphrase, beside the backups (a new passphrase
    replaces the old: the file made with it goes)."""
    body = parse(bodies.Passphrase, await read_json(request))
    path = _sealed_path(request)
    path.parent.mkdir(parents=True, exist_ok=True)
    if problem := files.shortfall(path.parent, keys.MAX_SEALED):
        raise NoSpace(problem)
    try:
        sealed = await asyncio.to_thread(keys.seal, _keys(request).current(), body.passphrase)
    except keys.BadKey as err:
        raise InvalidRequest(str(err), param="passphrase") from None
    files.write(path, sealed.encode())
    log.info("backups: the recovery key was sealed with a passphrase (%s)", path.name)
    return JSONResponse({"name": path.name}, status_code=201)


async def sealed_key(request: Request):
    path = _sealed_path(request)
    if not path.is_file():
        raise NotFound("the recovery key is not sealed with a passphrase (PUT /backups/sealed-key seals it)")
    return FileResponse(path, media_type="application/octet-stream", filename=path.name)


async def unseal_key(request: Request):
    _sealed_path(request).unlink(missing_ok=True)
    return Response(status_code=204)


async def back_up(request: Request):
    made = await _alone(request, lambda: asyncio.to_thread(contents.attempt, request.state.config))
    return JSONResponse({"name": made.name, "bytes": made.size, "created": made.created, "key": made.key},
                        status_code=201)


def _made(request: Request) -> contents.Made:
    name = request.path_params["name"]
    found = next((made for made in contents.listing(request.state.config.data) if made.name == name), None)
    if found is None:
        raise NotFound(f"there is no backup {name[:100]!r} on this box (GET /backups lists them)")
    return found


async def download(request: Request):
    made = _made(request)
    return FileResponse(made.path, media_type="application/octet-stream", filename=made.name)


async def delete(request: Request):
    _made(request).path.unlink(missing_ok=True)
    return Response(status_code=204)


async def _given_key(request: Request, needs: str, *, required: bool) -> str | None:
    """The key a restore was given: typed (X-Recovery-Key), or sealed and opened with X-Passphrase (the sealed
    file sent in X-Sealed-Key, or the box's own for the key `needs`, the backup's)."""
    phrase, typed = request.headers.get(PASSPHRASE_HEADER, ""), request.headers.get(KEY_HEADER, "")
    try:
        if phrase:
            phrase = unquote(phrase[:3 * keys.MAX_PASSPHRASE], errors="strict")
            return await asyncio.to_thread(keys.unseal, _sealed_given(request, needs), phrase)
        if typed or required:
            return keys.identity(typed[:200])
    except (keys.BadKey, UnicodeDecodeError) as err:
        raise InvalidRequest(f"{PASSPHRASE_HEADER if phrase else KEY_HEADER}: {err}", param="key") from None
    return None


def _sealed_given(request: Request, needs: str) -> str:
    sent = request.headers.get(SEALED_HEADER)
    if sent:
        try:
            return base64.b64decode(sent[:2 * keys.MAX_SEALED], validate=True).decode()
        except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors
            raise keys.BadKey(f"{SEALED_HEADER} is not the sealed key file in base64") from None
    kept = request.state.config.data.sealed_key(needs) if needs else None
    if kept is None or not kept.is_file():
        raise keys.BadKey("this box keeps no sealed recovery key for this backup: send the file "
                          f"recovery-key-{needs or 'XXXX-XXXX'}.age that was beside it")
    return kept.read_text()


async def _alone(request: Request, work):
    """`work` (a backup or a restore's check) while no other runs; its refusal as the API's error."""
    busy: asyncio.Lock = request.state.backing_up
    if busy.locked():
        raise Conflict("a backup or restore is running already; wait for it to end")
    async with busy:
        try:
            return await work()
        except BackupError as err:
            raise (NoSpace if isinstance(err, NotEnoughSpace) else InvalidRequest)(str(err)) from None


async def restore_upload(request: Request):
    """PUT the backup file as the body, its recovery key in X-Recovery-Key: checked and staged, not yet put
    in place (POST /backups/restore/confirm does that)."""
    needs = contents.needs_key(request.headers.get(NAME_HEADER, "")[:300])
    key = await _given_key(request, needs, required=True)
    data = request.state.config.data

    async def work():
        readable, writable = (os.fdopen(fd, mode) for fd, mode in zip(os.pipe(), ("rb", "wb")))

        def stage():
            with readable:  # closed as soon as staging ends, so that the upload stops on EPIPE
                return restore.stage(data, readable, key, needs=needs)

        staging = asyncio.create_task(asyncio.to_thread(stage))
        try:
            with writable:
                await pour(request, writable, data.root, what="a backup", max_bytes=MAX_BACKUP_BYTES,
                           expected=MAX_BACKUP_BYTES)
        except BrokenPipeError:
            pass  # staging refused the backup and stopped reading: its reason is the answer
        except BaseException:
            await asyncio.gather(staging, return_exceptions=True)
            swap.discard(data)
            raise
        return await staging

    return JSONResponse(await _alone(request, work))


async def restore_from_box(request: Request):
    """POST /backups/files/{name}/restore: stage a backup the box holds (the box's key, or X-Recovery-Key)."""
    made = _made(request)
    key = await _given_key(request, made.key, required=False) or _keys(request).current()
    if key is None:
        raise InvalidRequest(f"this box has no recovery key: send the backup's in {KEY_HEADER}", param="key")
    data = request.state.config.data

    def stage():
        with made.path.open("rb") as source:
            return restore.stage(data, source, key, needs=made.key)

    return JSONResponse(await _alone(request, lambda: asyncio.to_thread(stage)))


async def preview(request: Request):
    staged = restore.preview(request.state.config.data)
    if staged is None:
        raise NotFound("no restore is waiting: upload a backup first")
    return JSONResponse(staged)


async def confirm_restore(request: Request):
    """Put the staged restore in place: the service restarts and comes back as the backup's box."""
    data = request.state.config.data
    if restore.preview(data) is None:
        raise NotFound("no restore is waiting: upload a backup first")
    swap.commit(data)
    log.warning("restore confirmed: the service restarts to put it in place")
    if restart := request.state.restart:
        asyncio.get_running_loop().call_later(RESTART_SECONDS, restart)
    return JSONResponse({"status": "restarting"}, status_code=202)


async def cancel_restore(request: Request):
    swap.discard(request.state.config.data)
    return Response(status_code=204)


async def settings(request: Request):
    return await save_settings(request, "backup", SETTINGS)


async def wizard_restore(request: Request):
    """The setup wizard's way for a freshly flashed box: restore a backup instead of making an account."""
    return render(request, "restore.html", {"restore_path": RESTORE_PATH,
                                            "restore": restore.preview(request.state.config.data)})


OWNER = Identity.OWNER
RESTORERS = (Identity.OWNER, Identity.SETUP)
routes = [
    route("/backups", status, needs=OWNER, methods=["GET"]),
    route("/backups", back_up, needs=OWNER, methods=["POST"]),
    route("/backups/settings", settings, needs=OWNER, methods=["PUT"]),
    route("/backups/key", confirm_key, needs=OWNER, methods=["POST"]),
    route("/backups/key", renew_key, needs=OWNER, methods=["DELETE"]),
    route("/backups/sealed-key", seal_key, needs=OWNER, methods=["PUT"]),
    route("/backups/sealed-key", sealed_key, needs=OWNER, methods=["GET"]),
    route("/backups/sealed-key", unseal_key, needs=OWNER, methods=["DELETE"]),
    route("/backups/files/{name}", download, needs=OWNER, methods=["GET"]),
    route("/backups/files/{name}", delete, needs=OWNER, methods=["DELETE"]),
    route("/backups/files/{name}/restore", restore_from_box, needs=OWNER, methods=["POST"]),
    route("/backups/files/{name}/stick", copy_to_stick, needs=OWNER, methods=["POST"]),
    route("/backups/sticks", look_for_sticks, needs=OWNER, methods=["POST"]),
    route(RESTORE_PATH, restore_upload, needs=RESTORERS, methods=["PUT"]),
    route(RESTORE_PATH, preview, needs=RESTORERS, methods=["GET"]),
    route(RESTORE_PATH, cancel_restore, needs=RESTORERS, methods=["DELETE"]),
    route(RESTORE_PATH + "/confirm", confirm_restore, needs=RESTORERS, methods=["POST"]),
    page("/manage/backups", backups_page),
    page("/setup/restore", wizard_restore, needs=Identity.SETUP),
]
