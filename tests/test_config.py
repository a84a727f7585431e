import dataclasses
import json

import pytest
import yaml

from appliance import config
from appliance.config import ConfigError
from appliance.layout import DataDir
from buildhost import ROOT

pytestmark = pytest.mark.unit


def test_defaults_are_valid_and_complete():
    c = config.load(None)
    assert c.server.listen == "0.0.0.0:8080"
    assert c.inference.queue_size == 16
    assert c.listeners() == {"https": ("0.0.0.0", 443), "redirect": ("0.0.0.0", 80), "listen": ("0.0.0.0", 8080)}
    assert config.load(None, {"server": {"listen": "", "redirect": ""}}).listeners() == {"https": ("0.0.0.0", 443)}


@pytest.mark.parametrize("raw, message", [
    ({"server": {"listen": "nowhere"}}, "server.listen: 'nowhere' is not allowed (allowed: HOST:PORT"),
    ({"server": {"listen": "a:70000"}}, "server.listen: 'a:70000' has no valid port"),
    ({"inference": {"threads": -1}}, "inference.threads: -1 is out of range (allowed: 0 to 256)"),
    ({"inference": {"queue_size": "many"}}, "inference.queue_size: 'many' is not an integer"),
    ({"inference": {"queue_size": True}}, "inference.queue_size: True is not an integer"),
    ({"inferense": {}}, "inferense: unknown key (known: data_dir, device, server, inference, update, firewall, governor, backup, paths)"),
    ({"device": {"timezone": "Mars/Olympus"}}, "device.timezone: 'Mars/Olympus' is not a time zone this box knows"),
    ({"device": {"name": "<script>"}}, "device.name: '<script>' is not allowed"),
    ({"data_dir": "relative/path"}, "data_dir: 'relative/path' is not allowed (allowed: an absolute path)"),
    ({"server": 3}, "server: expected a mapping"),
])
def test_bad_values_name_key_value_and_what_is_allowed(raw, message):
    with pytest.raises(ConfigError) as err:
        config.parse(raw, "paladin.yaml")
    assert message in str(err.value)
    assert str(err.value).startswith("paladin.yaml: ")


def test_layers_system_then_owner_then_command_line(tmp_path):
    system = tmp_path / "paladin.yaml"
    data = tmp_path / "data"
    data.mkdir()
    system.write_text(f"data_dir: {data}\ninference:\n  threads: 3\n  queue_size: 4\n")
    DataDir(data).owner_config.write_text("inference:\n  queue_size: 8\n")
    c = config.load(system, {"server": {"listen": "127.0.0.1:9"}})
    assert (c.inference.threads, c.inference.queue_size, c.server.listen) == (3, 8, "127.0.0.1:9")


def test_broken_yaml_is_reported_with_the_file(tmp_path):
    bad = tmp_path / "paladin.yaml"
    bad.write_text("server: [unclosed\n")
    with pytest.raises(ConfigError, match=f"{bad}: not valid YAML"):
        config.load(bad)


def test_json_schema_comes_from_the_same_table():
    schema = config.json_schema(config.Config)
    threads = schema["properties"]["inference"]["properties"]["threads"]
    assert threads == {"type": "integer", "default": 0, "minimum": 0, "maximum": 256,
                       "description": config.InferenceConfig.__dataclass_fields__["threads"].metadata["help"]}
    json.dumps(schema)


def test_the_configuration_reference_is_generated_from_the_same_table():
    """docs/configuration.md is `paladin config docs`; regenerate it when a setting changes."""
    reference = (ROOT / "docs/configuration.md").read_text()
    assert reference == config.reference()
    for f in dataclasses.fields(config.UpdateConfig):
        assert f"`update.{f.name}`" in reference and f.metadata["help"] in reference


def test_the_owner_file_takes_only_valid_changes(tmp_path):
    saved = config.save_owner(tmp_path, {"update": {"url": "http://10.0.0.2/repo"}})
    assert saved.update.url == "http://10.0.0.2/repo"
    with pytest.raises(ConfigError, match="update.automatic: 'yes' is not true or false"):
        config.save_owner(tmp_path, {"update": {"automatic": "yes"}})
    kept = config.load(None, {"data_dir": str(tmp_path)})
    assert (kept.update.url, kept.update.automatic) == ("http://10.0.0.2/repo", False)


@pytest.mark.unit
@pytest.mark.parametrize("key, value", [("data_dir", "/etc"), ("paths", {"catalog": "/tmp/evil.yaml"})])
def test_where_things_are_is_not_the_owners_file_to_say(tmp_path, key, value):
    """Root's helpers read the owner's file too, and the assistant writes it: no path may come from there."""
    DataDir(tmp_path).owner_config.write_text(yaml.safe_dump({key: value}))
    with pytest.raises(ConfigError, match=f"config.yaml: {key}: not allowed here"):
        config.load(None, {"data_dir": str(tmp_path)}, tmp_path / "none.yaml")
    with pytest.raises(ConfigError, match=f"{key}: not the owner's file to set"):
        config.Live(config.load(None, {"data_dir": str(tmp_path / "other")}, tmp_path / "none.yaml")).save({key: value})
