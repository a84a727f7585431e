"""The box's nftables ruleset, rendered from the typed configuration, checked and loaded with `nft`.

Input and forwarding drop by default; the web ports, mDNS and (when the owner turns it on) SSH answer
only the LAN's ranges (`firewall.lan`).  Output is open unless the owner chose privacy mode.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import socket
from pathlib import Path
from urllib.parse import urlsplit

import jinja2

from .. import command, facts
from ..access import networks
from ..config import Config

TEMPLATE = Path(__file__).with_name("ruleset.nft")
RESOLVE_SECONDS = 10
NFT_SECONDS = 30


def services(config: Config) -> dict[str, int]:
    """The ports the LAN may open, by what answers there: the assistant's listeners that are not bound to
    loopback only, and SSH when it is on."""
    ports = {kind: port for kind, (host, port) in config.listeners().items()
             if not (host and _is_address(host) and ipaddress.ip_address(host).is_loopback)}
    if config.firewall.ssh:
        ports["ssh"] = facts.SSH_PORT
    return ports


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def update_endpoint(config: Config) -> tuple[str, int] | None:
    """The update server's host and port, when update.url names one (not a directory)."""
    url = urlsplit(config.update.url)
    if url.scheme not in ("http", "https") or not url.hostname:
        return None
    return url.hostname, url.port or (443 if url.scheme == "https" else 80)


def resolve(host: str, timeout: float = RESOLVE_SECONDS) -> list[str]:
    """`host`'s addresses; none when it cannot be resolved in `timeout` (before the network is up, say)."""
    if _is_address(host):
        return [host]
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        found = pool.submit(socket.getaddrinfo, host, None, type=socket.SOCK_STREAM).result(timeout)
    except (OSError, concurrent.futures.TimeoutError):
        return []
    finally:
        pool.shutdown(wait=False)  # a resolver stuck past its deadline is left behind, not waited for
    return sorted({info[4][0] for info in found})


def render(config: Config, update_addresses: list[str] = ()) -> str:
    """The ruleset for `config`; in privacy mode, the update server may be reached at `update_addresses`."""
    lan = networks(config.firewall.lan)
    endpoint = update_endpoint(config)
    ports = services(config)
    template = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                                  autoescape=False).from_string(TEMPLATE.read_text())
    return template.render(
        lan4=[str(n) for n in lan if n.version == 4], lan6=[str(n) for n in lan if n.version == 6],
        services=[f"{name} {port}" for name, port in ports.items()], ports=sorted(set(ports.values())),
        rate=config.firewall.connections_per_second, burst=config.firewall.connection_burst,
        per_client=config.server.connections_per_client,
        log_rate=config.firewall.logged_drops_per_minute, mdns_port=facts.MDNS_PORT,
        privacy=config.firewall.privacy, update_port=endpoint[1] if endpoint else None,
        update4=[a for a in update_addresses if ipaddress.ip_address(a).version == 4],
        update6=[a for a in update_addresses if ipaddress.ip_address(a).version == 6])


def check(ruleset: str) -> None:
    """CommandError with nft's own words unless the kernel would accept `ruleset` (nothing is changed)."""
    command.run(["nft", "--check", "--file", "-"], stdin=ruleset, timeout=NFT_SECONDS)


def load(ruleset: str) -> None:
    """Replace the box's table with `ruleset`, atomically: on any error the previous one stays."""
    command.run(["nft", "--file", "-"], stdin=ruleset, timeout=NFT_SECONDS)

