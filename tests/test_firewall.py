"""The firewall: rulesets rendered from the typed configuration and checked by the real `nft`, loaded into
network namespaces the test owns (never the host's), the last good ruleset kept when a configuration is
bad, and the owner's requests through the request channel."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from appliance import channel, config
from appliance.config import ConfigError
from appliance.firewall import rules
from appliance.firewall.state import host_key_fingerprint, outcome
from appliance.layout import DataDir, FirewallState
from buildhost.debian import ensure_host_packages
from tests.support.lan import OUTSIDE_GATEWAY, SERVER, Lan, run_in

FIREWALL = Path(sys.executable).with_name("paladin-firewall")
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHs9Bq0t0z9yJ8y3xYv1n2oE9k4gq5o2q0v9u3c5Wm7a owner@laptop"


@pytest.fixture(scope="module")
def nft():
    ensure_host_packages(["nftables", "openssh-client"])


@pytest.fixture
def netns(nft):
    """A network namespace of this test's own; commands run in it with run(...)."""
    name = f"paladin-fw-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield lambda *argv, check=True: subprocess.run(["ip", "netns", "exec", name, *map(str, argv)],
                                                       capture_output=True, text=True, check=check)
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True)


@pytest.mark.system
@pytest.mark.parametrize("raw", [
    {},
    {"firewall": {"ssh": True, "ssh_key": KEY, "lan": "192.168.1.0/24 fd00::/8"}},
    {"firewall": {"privacy": True, "logged_drops_per_minute": 0}, "update": {"url": "https://updates.example/r"}},
    {"firewall": {"lan": "fe80::/10"}, "server": {"listen": "", "redirect": "127.0.0.1:80"}},
])
def test_every_kind_of_ruleset_passes_nft_check(raw, nft):
    rules.check(rules.render(config.parse(raw), ["192.0.2.7", "2001:db8::7"]))


@pytest.mark.system
@pytest.mark.parametrize("raw", [
    # the defaults plus the owner's own subnet, inside one of them: nft refuses overlapping intervals
    {"firewall": {"lan": "10.0.0.0/8 172.16.0.0/12 192.168.0.0/16 192.168.1.0/24 169.254.0.0/16 fc00::/7 "
                         "fe80::/10 fd00::/8 fd00::/16"}},
    # every listener on loopback and SSH off: no port for the LAN at all
    {"server": {"listen": "127.0.0.1:8080", "https": "127.0.0.1:443", "redirect": "127.0.0.1:80"}},
])
def test_overlapping_ranges_and_no_open_port_still_make_a_ruleset_nft_takes(raw, nft):
    text = rules.render(config.parse(raw))
    rules.check(text)
    if "lan" in raw.get("firewall", {}):
        assert "elements = { 10.0.0.0/8, 169.254.0.0/16, 172.16.0.0/12, 192.168.0.0/16 }" in text
        assert "elements = { fc00::/7, fe80::/10 }" in text


@contextlib.contextmanager
def listening(box: str):
    """An HTTP server on port 8080 of the box's namespace, once it listens."""
    server = subprocess.Popen(["ip", "netns", "exec", box, sys.executable, "-m", "http.server", "8080", "--bind",
                               "10.77.7.50"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not run_in(box, ["ss", "-Hltn", "sport = :8080"]).strip():
            assert time.monotonic() < deadline and server.poll() is None, "the listener did not start"
            time.sleep(0.1)
        yield
    finally:
        server.kill()
        server.wait()


@pytest.fixture
def two_hosts(nft, tmp_path):
    """A box and a laptop on one LAN of network namespaces (tests/support/lan.py): their namespaces."""
    with Lan(tmp_path / "lan") as lan:
        yield lan.add_host("box", "10.77.7.50/24"), lan.add_host("laptop", "10.77.7.10/24")


@pytest.mark.system
def test_a_lone_ack_draws_nothing_and_a_ping_run_is_held_to_its_limit(two_hosts, tmp_path):
    """The defaults' ruleset in the box's namespace, a listener on 8080, and the laptop trying what
    conntrack would otherwise let through: an ACK with no connection (a RST would say the port is there;
    nmap's ACK scan calls that "unfiltered") and a fast run of pings (after the first reply conntrack calls
    the run established)."""
    box, laptop = two_hosts
    ruleset = tmp_path / "ruleset.nft"
    ruleset.write_text(rules.render(config.parse({})))
    run_in(box, ["nft", "-f", ruleset])
    with listening(box):
        assert "8080/tcp open" in run_in(laptop, ["nmap", "-n", "-Pn", "-sT", "-p", "8080", "10.77.7.50"])
        acked = run_in(laptop, ["nmap", "-n", "-Pn", "-sA", "--max-retries", "1", "-p", "8080", "10.77.7.50"])
        assert "8080/tcp filtered" in acked, acked
    pinged = subprocess.run(["ip", "netns", "exec", laptop, "ping", "-n", "-q", "-c", "100", "-i", "0.002", "-W", "1",
                             "10.77.7.50"], capture_output=True, text=True, timeout=60).stdout
    received, ms = map(int, re.search(r"(\d+) received.* time (\d+)ms", pinged).groups())
    assert 10 <= received <= 10 + 5 * ms / 1000 + 1, pinged  # a burst of 10, then 5 a second


# Connects `count` times to the box and prints how many got through within 2 s each (run on the laptop).
CONNECT = """
import socket, sys
held = []
for _ in range(int(sys.argv[2])):
    try:
        held.append(socket.create_connection((sys.argv[1], 8080), timeout=2))
    except OSError:
        pass
print(len(held))
"""


@pytest.mark.system
def test_one_address_holds_at_most_its_connections(two_hosts, tmp_path):
    """ct count per address on the box's ports: the laptop's fifth connection never gets an answer."""
    box, laptop = two_hosts
    ruleset = tmp_path / "ruleset.nft"
    ruleset.write_text(rules.render(config.parse({"server": {"connections_per_client": 4}})))
    run_in(box, ["nft", "-f", ruleset])
    with listening(box):
        assert run_in(laptop, [sys.executable, "-c", CONNECT, "10.77.7.50", 6]).strip() == "4"
    crowded = run_in(box, ["nft", "list", "counter", "inet", "paladin", "crowded"])
    assert int(re.search(r"packets (\d+)", crowded).group(1)) >= 2, crowded  # two SYNs, and their retries


# In the box's namespace: the senders of the datagrams that reach its DHCP client's port within 5 s.
DHCP_CLIENT = """
import json, socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 68))
print("bound", flush=True)
senders, deadline = [], time.monotonic() + 5
while (left := deadline - time.monotonic()) > 0:
    s.settimeout(left)
    try:
        senders.append(s.recvfrom(64)[1][0])
    except TimeoutError:
        break
print(json.dumps(senders))
"""
# On a host: a DHCP server's answer, from port 67 to the box's client.
DHCP_SERVER = "import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('', 67)); " \
              "s.sendto(b'offer', (sys.argv[1], 68))"


@pytest.mark.system
def test_dhcp_answers_are_taken_from_the_lan_only(nft, tmp_path):
    """A DHCP server on the LAN reaches the box's client (renewals arrive on its UDP socket); a host
    beyond a router sending from port 67 does not (the box routes back to it, so only the ruleset stops it)."""
    with Lan(tmp_path / "lan") as lan:
        box = lan.add_host("box", "10.77.7.50/24", gateway=SERVER.partition("/")[0])
        server = lan.add_host("laptop", "10.77.7.10/24")
        stranger = lan.add_host("outsider", "198.51.100.10/24", gateway=OUTSIDE_GATEWAY)
        ruleset = tmp_path / "ruleset.nft"
        ruleset.write_text(rules.render(config.parse({})))
        run_in(box, ["nft", "-f", ruleset])
        client = subprocess.Popen(["ip", "netns", "exec", box, sys.executable, "-c", DHCP_CLIENT],
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert client.stdout.readline().strip() == "bound"
            for host in (stranger, server):
                run_in(host, [sys.executable, "-c", DHCP_SERVER, "10.77.7.50"])
            assert json.loads(client.stdout.readline()) == ["10.77.7.10"]
        finally:
            client.kill()
            client.wait()


@pytest.mark.unit
def test_the_ruleset_opens_the_services_to_the_lan_only_and_drops_the_rest():
    text = rules.render(config.parse({"firewall": {"ssh": True, "ssh_key": KEY, "lan": "192.168.1.0/24 fd00::/8"},
                                      "server": {"listen": "127.0.0.1:8080"}}))
    assert "policy drop" in re.search(r"chain input \{[^}]*", text).group(0)
    assert "policy drop" in re.search(r"chain forward \{[^}]*", text).group(0)
    assert "policy accept" in re.search(r"chain output \{[^}]*", text).group(0)
    assert "elements = { 192.168.1.0/24 }" in text and "elements = { fd00::/8 }" in text
    assert "tcp dport { 22, 80, 443 } ip saddr @lan4 accept" in text  # 8080 answers loopback only here
    assert "limit rate over 20/second burst 60 packets" in text


@pytest.mark.unit
def test_privacy_mode_lets_out_only_dns_the_network_and_the_update_server():
    cfg = config.parse({"firewall": {"privacy": True}, "update": {"url": "https://updates.example:8443/r"}})
    text = rules.render(cfg, ["192.0.2.7"])
    output = text[text.index("chain output"):]
    assert "policy drop" in output and "ip daddr @update4 tcp dport 8443 accept" in output
    assert "elements = { 192.0.2.7 }" in text
    assert "udp dport 123" not in output  # network time is off in privacy mode
    assert not cfg.network_time
    # DHCP and mDNS only to where they belong: broadcast, the LAN's server, their multicast groups
    assert re.findall(r"udp dport (?:67|547|5353) [^\n]*accept", output) == [
        "udp dport 67 ip daddr 255.255.255.255 accept", "udp dport 67 ip daddr @lan4 accept",
        "udp dport 547 ip6 daddr ff02::1:2 accept", "udp dport 5353 ip daddr 224.0.0.251 accept",
        "udp dport 5353 ip6 daddr ff02::fb accept"]


@pytest.mark.unit
@pytest.mark.parametrize("raw, message", [
    ({"lan": "192.168.1.1/24"}, "firewall.lan: '192.168.1.1/24' is not a list of address ranges"),
    ({"lan": "0.0.0.0/0"}, "opens the box to every address"),
    ({"lan": "0.0.0.0/1 128.0.0.0/1"}, "opens the box to every address"),
    ({"lan": ""}, "names no range"),
    ({"ssh_key": "ssh-dss AAAAB3"}, "is not an OpenSSH public key"),
    ({"ssh_key": "ssh-rsa " + KEY.split()[1]}, "does not match its type"),
    ({"connections_per_second": 0}, "out of range"),
])
def test_bad_firewall_values_fail_the_config_check_clearly(raw, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        config.parse({"firewall": raw})


@pytest.mark.unit
def test_the_owners_config_file_cannot_touch_the_firewall(tmp_path):
    DataDir(tmp_path).owner_config.write_text("firewall: {ssh: true}\n")
    with pytest.raises(ConfigError, match="firewall: not allowed here"):
        config.load(None, {"data_dir": str(tmp_path)}, tmp_path / "none.yaml")


@pytest.mark.system
def test_render_shows_what_load_loads_with_the_update_server_resolved(nft, tmp_path):
    state, data = tmp_path / "state", tmp_path / "data"
    state.mkdir()
    (state / config.FIREWALL_SETTINGS.name).write_text("privacy: true\n")
    system = tmp_path / "paladin.yaml"
    system.write_text("update:\n  url: http://localhost:8443/repo\n")
    shown = subprocess.run([FIREWALL, "render", "--state", state, "--data-dir", data, "--config", system],
                           capture_output=True, text=True, check=True).stdout
    assert "set update4" in shown and "elements = { 127.0.0.1 }" in shown, shown
    assert "ip daddr @update4 tcp dport 8443 accept" in shown


def load_in(netns, state: Path, data: Path) -> subprocess.CompletedProcess:
    """`paladin-firewall load` as its unit runs it (umask 0077) in `netns`."""
    return netns("sh", "-c", 'umask 077 && exec "$@"', "sh", FIREWALL, "load", "--state", state, "--data-dir", data,
                 "--config", "/nonexistent", check=False)


@pytest.mark.system
def test_a_bad_configuration_keeps_the_last_good_ruleset(netns, tmp_path):
    state, data = tmp_path / "state", tmp_path / "data"
    state.mkdir()
    FirewallState(state).settings.write_text("lan: 192.168.7.0/24\n")
    assert load_in(netns, state, data).returncode == 0
    good = netns("nft", "list", "table", "inet", "paladin").stdout
    assert "192.168.7.0/24" in good

    FirewallState(state).settings.write_text("lan: 192.168.7.0/33\n")
    failed = load_in(netns, state, data)
    assert failed.returncode == 1
    assert "the last good ruleset is loaded" in failed.stderr and "firewall.lan" in failed.stderr
    assert netns("nft", "list", "table", "inet", "paladin").stdout == good


@pytest.mark.system
def test_with_no_good_ruleset_yet_a_bad_configuration_loads_the_defaults(netns, tmp_path):
    state, data = tmp_path / "state", tmp_path / "data"
    state.mkdir()
    FirewallState(state).settings.write_text("privacy: maybe\n")
    failed = load_in(netns, state, data)
    assert failed.returncode == 1 and "the default ruleset is loaded" in failed.stderr
    listed = netns("nft", "list", "table", "inet", "paladin").stdout
    assert "policy drop" in listed and "192.168.0.0/16" in listed


def request_in(netns, state: Path, data: Path, **settings) -> subprocess.CompletedProcess:
    channel.submit(data, channel.FirewallRequest(**({"lan": config.DEFAULT_LAN, "privacy": False, "ssh": False,
                                                     "ssh_key": ""} | settings)))
    return netns(FIREWALL, "request", "--state", state, "--data-dir", data, "--config", "/nonexistent", check=False)


@pytest.mark.system
def test_an_owners_request_is_validated_then_applied_or_changes_nothing(netns, tmp_path):
    state, data = tmp_path / "state", tmp_path / "data"
    assert load_in(netns, state, data).returncode == 0
    assert request_in(netns, state, data, lan="10.1.0.0/16 fd12::/16").returncode == 0
    applied = netns("nft", "list", "table", "inet", "paladin").stdout
    assert "10.1.0.0/16" in applied and "fd12::/16" in applied
    assert yaml.safe_load(FirewallState(state).settings.read_text())["lan"] == "10.1.0.0/16 fd12::/16"
    assert outcome(FirewallState(state))["ok"] and not channel.pending(data, "firewall")
    public = state / "ssh" / "ssh_host_ed25519_key.pub"
    assert host_key_fingerprint(FirewallState(state)) in subprocess.run(  # made at boot, shown as ssh does
        ["ssh-keygen", "-l", "-f", public], capture_output=True, text=True).stdout
    assert (public.stat().st_mode & 0o777, (state / "ssh" / "ssh_host_ed25519_key").stat().st_mode & 0o777) == \
        (0o644, 0o600)

    for bad in ({"lan": "0.0.0.0/0"}, {"ssh": True}, {"ssh_key": "not a key"}):
        refused = request_in(netns, state, data, **bad)
        assert refused.returncode == 1 and "were not changed" in refused.stderr
        assert not outcome(FirewallState(state))["ok"]
        assert netns("nft", "list", "table", "inet", "paladin").stdout == applied
        assert not (state / "ssh" / "authorized_keys").exists()
    # A request the worker forged past the channel's schema is refused as a whole.
    (DataDir(data).requests / "firewall.json").write_text(json.dumps({"lan": "10.0.0.0/8", "privacy": False, "ssh": 1,
                                                                 "ssh_key": ""}))
    assert netns(FIREWALL, "request", "--state", state, "--data-dir", data, "--config", "/nonexistent",
                 check=False).returncode == 1
    assert "FirewallRequest.ssh" in outcome(FirewallState(state))["message"]
