"""First boot, and every boot after it: the device's secrets, the setup code while the box has no owner,
and what the console tells a person in front of the box (`paladin firstboot`, paladin-firstboot.service).

The console text goes to the getty's issue file (/etc/issue.d/50-paladin.issue links to ISSUE), so it
is on an HDMI screen and on the serial console above the login prompt, and to the journal.  The
setup code is shown only until the wizard finishes.  An owner without a screen writes a code of their
choosing on the box's PALADIN drive before its first boot (paladin-card takes it off the drive, this
judges it): it proves the same as the screen does, that whoever sets the box up had it in hand.  Too
many wrong codes lock the wizard; restarting the box (or `paladin setup reset` on its console) makes a
new code, so only someone at the box can unlock it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from . import db as database, device, facts, files, owner
from .config import Config

log = logging.getLogger(__name__)
ISSUE = Path("/run/paladin-console/issue")


def prepare(config: Config, *, new_code: bool = False, card: Path = Path(facts.CARD_HANDED)) -> device.Secrets:
    """Make the device's missing secrets and, while setup is unfinished, a setup code: the one the owner wrote
    on the PALADIN drive if it is strong enough, else a new one if there is none, the wizard is locked, or
    `new_code` asks for one."""
    made = device.ensure(config.data_path)
    chosen = _chosen(card)
    db = database.connect(config.data.database)
    try:
        if owner.finished(db):
            device.forget_code(made)
            if chosen is not None:
                log.warning("the setup code written on the PALADIN drive was removed unused: this box is set up")
            return made
        if chosen is not None:
            made.refused_code_file.unlink(missing_ok=True)
            if (weak := device.weakness(chosen)) is None:
                device.new_code(made, chosen)
                owner.clear_failures(db)
                log.info("the setup code is the one written on the PALADIN drive")
                return made
            log.warning("the setup code written on the PALADIN drive was not used: %s. The box shows one of its "
                        "own on its screen; or write a stronger one on the drive and restart the box", weak)
            # an owner without a screen reads why on the wizard's first page (the reason, never the code)
            files.write(made.refused_code_file, weak.encode(), mode=0o600)
        if new_code or made.setup_code() is None or owner.locked(db, config.server.setup_attempts):
            device.new_code(made)
            owner.clear_failures(db)
    finally:
        db.close()
    return made


def _chosen(card: Path) -> str | None:
    """The code paladin-card took off the PALADIN drive this boot (taken once: removed here), or None."""
    try:
        raw = card.read_bytes()
    except FileNotFoundError:
        return None
    card.unlink()
    return raw.decode("utf-8-sig", errors="replace").strip()


def lines(config: Config, made: device.Secrets, addresses: list[str]) -> list[str]:
    https = config.listeners().get("https")
    port = "" if not https or https[1] == 443 else f":{https[1]}"
    code = made.setup_code()
    text = ["PAL-adin, your private assistant" + (f" ({config.device.name})" if code is None else ""),
            f"  Open https://{facts.MDNS_NAME}{port}" + "".join(f"  or  https://{a}{port}" for a in addresses)]
    if code:
        text.append(f"  Setup code: {code}")
    text.append(f"  Certificate SHA-256: {made.fingerprint()}")
    text.append("  (your browser will warn about this certificate once: check that it shows this fingerprint)")
    return text


def announce(config: Config, issue: Path = ISSUE) -> None:
    """Tell the console and the journal how to reach the box (and, before setup, its code)."""
    made = device.secrets_of(config.data_path)
    now = [str(a) if a.version == 4 else f"[{a}]" for a in device.addresses() if not a.is_link_local]
    for line in lines(config, made, now):
        print(line, flush=True)
    if issue.parent.is_dir():
        # agetty fills in \4 with the box's IPv4 address when it draws the prompt (DHCP may come later).
        text = "\n".join(lines(config, made, ["\\4"]))
        files.write(issue, (text + "\n\n").encode(), mode=0o644)


def factory_reset(config: Config) -> None:
    """Back to a box fresh from its image: the owner, their sessions, tokens, conversations and settings,
    and the device's secrets are deleted (the next `prepare` makes new ones); downloaded models stay."""
    data = config.data
    doomed = [data.owner_config, *data.root.glob(data.database.name + "*")]
    for path in doomed:
        path.unlink(missing_ok=True)
    secrets = data.device.root
    for path in secrets.glob("*") if secrets.is_dir() else ():
        path.unlink()
    log.warning("factory reset: the owner's account, data, settings and this box's keys were deleted")
