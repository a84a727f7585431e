"""What the owner's access settings may be: the LAN's address ranges and the SSH public key.  The config
checks them (in every process that reads it), the firewall helper applies them."""

from __future__ import annotations

import base64
import ipaddress

MAX_LAN_RANGES = 32
SSH_KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-rsa",
                 "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com")


def networks(ranges: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The address ranges in a space-separated list (CIDR), merged where they overlap or touch (nft refuses
    overlapping intervals in one set), IPv4 first; or a ConfigError-ready ValueError."""
    parts = [ipaddress.ip_network(part, strict=True) for part in ranges.split()]
    return [merged for version in (4, 6) for merged in
            ipaddress.collapse_addresses(net for net in parts if net.version == version)]


def lan_problem(ranges: str) -> str | None:
    parts = ranges.split()
    if not parts:
        return "names no range: without one, nothing on the LAN could reach the box (allowed: e.g. 192.168.0.0/16)"
    if len(parts) > MAX_LAN_RANGES:
        return f"names {len(parts)} ranges (allowed: at most {MAX_LAN_RANGES})"
    try:
        found = networks(ranges)
    except ValueError as err:
        return f"is not a list of address ranges: {err} (allowed: e.g. 192.168.1.0/24 fd00::/8)"
    if any(net.prefixlen == 0 for net in found):  # the union is judged: 0.0.0.0/1 128.0.0.0/1 is everything too
        return "opens the box to every address (0.0.0.0/0 or ::/0, alone or together): name the LAN's ranges"
    return None


def ssh_key_problem(key: str) -> str | None:
    if not key:
        return None
    kind, _, rest = key.partition(" ")
    blob = rest.split(" ")[0]
    if kind not in SSH_KEY_TYPES:
        return f"is not an OpenSSH public key (allowed types: {', '.join(SSH_KEY_TYPES)})"
    try:
        decoded = base64.b64decode(blob, validate=True)
    except ValueError:
        return "is not an OpenSSH public key: its key part is not base64"
    # The blob starts with its own type name (RFC 4253): a key pasted into the wrong field does not pass.
    if decoded[4:4 + len(kind)] != kind.encode() or int.from_bytes(decoded[:4], "big") != len(kind):
        return "is not an OpenSSH public key: its key part does not match its type"
    return None
