"""What a box sent, read from qemu's packet captures (filter-dump, pcap): each packet's kind, so a test can
say which of them the configuration allows.  Standard library only: Ethernet, ARP, IPv4, IPv6, UDP, TCP,
ICMP, ICMPv6 and IGMP are all a box on a LAN speaks."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from pathlib import Path

PCAP_MAGIC = 0xA1B2C3D4


@dataclass(frozen=True)
class Packet:
    source_mac: str
    protocol: str  # arp, udp, tcp, icmp, icmpv6, igmp, or the IP protocol number
    destination: str = ""
    source_port: int = 0
    destination_port: int = 0
    icmp_type: int = 0

    def __str__(self) -> str:
        ports = f" {self.source_port}->{self.destination_port}" if self.source_port or self.destination_port else ""
        kind = f" type {self.icmp_type}" if self.protocol.startswith("icmp") else ""
        return f"{self.protocol}{ports}{kind} to {self.destination or '(link)'}"


def _mac(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def _transport(protocol: int, payload: bytes, destination: str, source_mac: str) -> Packet:
    names = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmpv6", 2: "igmp"}
    name = names.get(protocol, str(protocol))
    if name in ("tcp", "udp") and len(payload) >= 4:
        source_port, destination_port = struct.unpack("!HH", payload[:4])
        return Packet(source_mac, name, destination, source_port, destination_port)
    if name in ("icmp", "icmpv6") and payload:
        return Packet(source_mac, name, destination, icmp_type=payload[0])
    return Packet(source_mac, name, destination)


def _ipv6(frame: bytes, source_mac: str) -> Packet:
    header, protocol, offset = frame[14:54], frame[20], 54
    destination = str(ipaddress.IPv6Address(header[24:40]))
    while protocol in (0, 43, 60) and len(frame) > offset + 2:  # hop-by-hop (MLD), routing, destination options
        protocol, offset = frame[offset], offset + (frame[offset + 1] + 1) * 8
    return _transport(protocol, frame[offset:], destination, source_mac)


def decode(frame: bytes) -> Packet:
    source_mac, ethertype = _mac(frame[6:12]), struct.unpack("!H", frame[12:14])[0]
    if ethertype == 0x0806:
        return Packet(source_mac, "arp")
    if ethertype == 0x0800:
        header_length = (frame[14] & 0x0F) * 4
        destination = str(ipaddress.IPv4Address(frame[30:34]))
        return _transport(frame[23], frame[14 + header_length:], destination, source_mac)
    if ethertype == 0x86DD:
        return _ipv6(frame, source_mac)
    return Packet(source_mac, f"ethertype 0x{ethertype:04x}")


def read(pcap: Path) -> list[Packet]:
    """Every frame in the capture `pcap`, decoded (a frame cut off at the end of a capture in progress is
    left out)."""
    data = pcap.read_bytes()
    if len(data) < 24 or struct.unpack("<I", data[:4])[0] != PCAP_MAGIC:
        raise AssertionError(f"{pcap} is not a little-endian pcap file")
    packets, offset = [], 24
    while offset + 16 <= len(data):
        length = struct.unpack("<I", data[offset + 8:offset + 12])[0]
        frame = data[offset + 16:offset + 16 + length]
        offset += 16 + length
        if len(frame) == length and length >= 14:
            packets.append(decode(frame))
    return packets


def sent_by(packets: list[Packet], mac: str) -> list[Packet]:
    return [p for p in packets if p.source_mac == mac.lower()]
