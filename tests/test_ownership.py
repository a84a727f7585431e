"""The box's own secrets, its owner's account and sessions, and the setup wizard's state: in-process."""

import logging
import time

import pytest
from cryptography import x509

from appliance import card, certificate, config, db as database, device, firstboot, owner, sessions
from appliance.errors import InvalidRequest

pytestmark = pytest.mark.unit


@pytest.fixture
def cfg(tmp_path):
    return config.parse({"data_dir": str(tmp_path)})


@pytest.fixture
def db(cfg):
    return database.connect(cfg.data.database)


def test_two_first_boots_share_no_secret(tmp_path):
    one, two = device.ensure(tmp_path / "one"), device.ensure(tmp_path / "two")
    for name in ("tls_key", "tls_certificate", "session_key_file"):
        assert getattr(one, name).read_bytes() != getattr(two, name).read_bytes()
    assert one.fingerprint() != two.fingerprint()
    assert {p.stat().st_mode & 0o777 for p in (one.tls_key, one.session_key_file)} == {0o600}


def test_secrets_are_made_once_and_an_interrupted_first_boot_finishes(tmp_path):
    made = device.ensure(tmp_path)
    before = {p.name: p.read_bytes() for p in made.root.iterdir()}
    assert {p.name: p.read_bytes() for p in device.ensure(tmp_path).root.iterdir()} == before
    made.tls_certificate.unlink()  # a power cut between the key and its certificate
    device.ensure(tmp_path)
    assert made.tls_key.read_bytes() == before["tls-key.pem"]
    cert = x509.load_pem_x509_certificate(made.tls_certificate.read_bytes())
    assert cert.public_key().public_numbers() == x509.load_pem_x509_certificate(
        before["tls-cert.pem"]).public_key().public_numbers()
    made.tls_key.unlink()  # a key lost: a certificate for another key must not survive it
    device.ensure(tmp_path)
    assert made.tls_certificate.read_bytes() != before["tls-cert.pem"]


def test_the_certificate_names_the_box(tmp_path):
    cert = x509.load_pem_x509_certificate(device.ensure(tmp_path, hostname="kitchen").tls_certificate.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"paladin.local", "kitchen.local", "kitchen"} <= set(names.get_values_for_type(x509.DNSName))
    assert "127.0.0.1" in {str(a) for a in names.get_values_for_type(x509.IPAddress)}
    assert cert.not_valid_before_utc <= certificate.NOT_BEFORE < cert.not_valid_after_utc


def test_setup_codes_are_random_and_typed_loosely():
    codes = {device.new_setup_code() for _ in range(100)}
    assert len(codes) == 100
    code = codes.pop()
    assert len(code) == 14 and set(code.replace("-", "")) <= set(device.CODE_ALPHABET)
    assert device.normalise_code(f"  {code.lower().replace('-', ' ')} ") == code


def test_first_boot_makes_a_code_until_setup_finishes_and_a_new_one_when_locked(cfg, db, tmp_path, capsys):
    made = firstboot.prepare(cfg)
    code = made.setup_code()
    assert code and firstboot.prepare(cfg).setup_code() == code  # every boot: the same code
    for _ in range(cfg.server.setup_attempts):
        owner.count_failure(db)
    assert firstboot.prepare(cfg).setup_code() != code and owner.failures(db) == 0  # a restart unlocks
    firstboot.announce(cfg, tmp_path / "no-such-dir" / "issue")
    shown = capsys.readouterr().out
    assert f"Setup code: {made.setup_code()}" in shown and made.fingerprint() in shown
    owner.finish(db)
    assert firstboot.prepare(cfg).setup_code() is None
    issue = tmp_path / "issue"
    (tmp_path / "run").mkdir()
    firstboot.announce(cfg, tmp_path / "run" / "issue")
    assert "Setup code" not in (tmp_path / "run" / "issue").read_text() and "https://\\4" in (
        tmp_path / "run" / "issue").read_text()
    assert not issue.exists()


def test_a_code_the_owner_wrote_on_the_paladin_drive_is_taken_off_it_judged_and_opens_the_wizard(cfg, db, tmp_path,
                                                                                                   caplog):
    drive, handed = tmp_path / "drive", tmp_path / "run/paladin-card-code/code"
    drive.mkdir()
    caplog.set_level(logging.INFO)

    def boot(text: str | None) -> str | None:
        """A boot with `text` in setup-code.txt on the drive: paladin-card, then the first-boot unit."""
        if text is not None:
            (drive / "setup-code.txt").write_text(text)
        said = card.take(drive, handed)
        assert not (drive / "setup-code.txt").exists() and ("took" in said) == (text is not None), said
        code = firstboot.prepare(cfg, card=handed).setup_code()
        assert not handed.exists()  # taken once: a later `paladin setup reset` does not take it again
        return code

    made = boot(None)
    assert made and boot(None) == made  # no drive code: the box's own, as before
    chosen = boot("\ufeffViolet tractor-seven LANTERN\r\n")  # Notepad's BOM and line end
    assert chosen == device.normalise_code("violet tractor seven lantern") != made
    assert boot(None) == chosen and "the one written on the PALADIN drive" in caplog.text
    for weak, why in (("1234 5678", "it has 8 letters and digits; at least 12 are needed"),
                      ("aaaa-aaaa-bbbb", "it uses only 2 different letters and digits"),
                      ("x" * 1025, "it is longer than 1024 bytes")):
        caplog.clear()
        assert boot(weak) == chosen and f"was not used: {why}" in caplog.text
        assert device.secrets_of(cfg.data_path).refused_code().startswith(why)  # for the wizard's first page
    for _ in range(cfg.server.setup_attempts):
        owner.count_failure(db)
    assert boot("short") not in (chosen, None)  # locked, and the drive's code too weak: a new one of the box's
    assert boot("violet tractor seven lantern") and device.secrets_of(cfg.data_path).refused_code() is None
    owner.finish(db)
    caplog.clear()
    assert boot("violet tractor seven lantern") is None and "removed unused: this box is set up" in caplog.text


def test_factory_reset_forgets_the_owner_and_the_keys_but_keeps_models(cfg, db):
    made = firstboot.prepare(cfg)
    fingerprint = made.fingerprint()
    owner.set_account(db, "Ada", "correct horse battery")
    owner.finish(db)
    cfg.data.owner_config.write_text("device: {name: Kitchen}\n")
    cfg.data.models.mkdir()
    (cfg.data.models / "kept.gguf").write_bytes(b"GGUF")
    db.close()
    firstboot.factory_reset(cfg)
    again = firstboot.prepare(cfg)
    fresh = database.connect(cfg.data.database)
    assert owner.account(fresh) is None and not owner.finished(fresh) and again.setup_code()
    assert again.fingerprint() != fingerprint
    assert not cfg.data.owner_config.exists() and (cfg.data.models / "kept.gguf").exists()


def test_passwords_are_stretched_checked_and_refused_with_reasons(db):
    owner.set_account(db, "Ada", "correct horse battery")
    stored = owner.account(db)["password"]
    assert stored.startswith("scrypt$32768$8$1$") and "correct" not in stored
    assert owner.check_login(db, "Ada", "correct horse battery")
    assert not owner.check_login(db, "Ada", "correct horse batterY")
    assert not owner.check_login(db, "Eve", "correct horse battery")
    for name, password, says in (("Ada", "short", "at least 12"), ("Ada", "aaaaaaaaaaaaaaaa", "too easy"),
                                 ("Ada Lovelace", "ada lovelace", "too easy"), (" Ada", "correct horse battery",
                                                                                 "printable")):
        with pytest.raises(InvalidRequest, match=says):
            owner.set_account(db, name, password)


def test_the_wizard_goes_forward_and_back_and_finishing_is_for_good(db):
    assert owner.step(db) == "code" and "owner" not in owner.reached(db)
    owner.complete(db, "code")
    owner.complete(db, "owner")
    assert owner.step(db) == "device" and "owner" in owner.reached(db)
    owner.complete(db, "code")  # going back and sending an earlier step again keeps the progress
    assert owner.step(db) == "device"
    owner.finish(db)
    assert owner.step(db) == "done" and owner.finished(db)


def test_sessions_expire_end_and_carry_a_csrf_token(db, monkeypatch):
    raw = sessions.start(db, "setup")
    assert sessions.find(db, raw, 60) == "setup" and sessions.find(db, raw + "x", 60) is None
    sessions.promote(db, raw)
    assert sessions.find(db, raw, 60) == "owner"
    key = b"k" * 32
    token = sessions.csrf_token(key, raw)
    forged = token[:-1] + ("1" if token[-1] == "0" else "0")
    assert sessions.csrf_matches(key, raw, token) and not sessions.csrf_matches(key, raw, forged)
    assert not sessions.csrf_matches(b"x" * 32, raw, token) and not sessions.csrf_matches(key, raw, None)
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + 61)
    assert sessions.find(db, raw, 60) is None  # idle too long: gone for good
    monkeypatch.undo()
    assert sessions.find(db, raw, 60) is None
    other = sessions.start(db, "owner")
    sessions.end(db, other)
    assert sessions.find(db, other, 60) is None
