"""A box with something to lose: an owner, conversations, tokens, settings, its keys and a confirmed
recovery key."""

from dataclasses import dataclass

import pytest

from appliance import config, conversations, db as database, firstboot, owner, tokens
from appliance.backup import keys
from tests.support.wizard import PASSWORD  # the one the browser tests log in with

PASSPHRASE = "Grüße aus der Küche, 7 Tassen"  # seals the recovery key: not Latin-1, as an owner may type


@dataclass
class Box:
    cfg: config.Config
    key: str  # the confirmed recovery key (AGE-SECRET-KEY-1...)
    token: str

    @property
    def data(self):
        return self.cfg.data


def make_box(root, name="Kitchen") -> Box:
    """A finished box in `root` with two conversations, a live token and a confirmed recovery key."""
    cfg = config.parse({"data_dir": str(root), "device": {"name": name}})
    firstboot.prepare(cfg)
    config.save_owner(cfg.data_path, {"device": {"name": name}, "governor": {"temperature": 70}})
    db = database.connect(cfg.data.database)
    owner.set_account(db, "Ada", PASSWORD)
    owner.finish(db)
    for title in ("Recipes", "Garden"):
        chat = conversations.create(db, title)
        conversations.add_message(db, chat["id"], "user", f"about {title}")
    token = tokens.create(db, "home-assistant")
    db.close()
    ring = keys.Keys(cfg.data.device)
    proposed = ring.proposed()
    ring.confirm(0, keys.groups(str(proposed))[0])
    return Box(config.parse({"data_dir": str(root), "device": {"name": name}}), ring.current(), token)


def fresh_box(root) -> Box:
    """A box as a first boot leaves it: keys and a setup code, nobody's data."""
    cfg = config.parse({"data_dir": str(root)})
    firstboot.prepare(cfg)
    return Box(cfg, None, "")


def rows(data) -> dict:
    """What a restore must bring back exactly, read from the database as the service would."""
    db = database.connect(data.database)
    try:
        return {table: [tuple(r) for r in db.execute(f"SELECT * FROM {table} ORDER BY 1")]
                for table in ("owner", "conversations", "messages", "api_tokens")}
    finally:
        db.close()


@pytest.fixture
def box(tmp_path) -> Box:
    return make_box(tmp_path / "box")
