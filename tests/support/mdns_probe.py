"""What a host on the test LAN sees of the box over mDNS, as JSON; run inside its network namespace by
lan.Lan.mdns (python-zeroconf, a client of its own, not the host's avahi or resolver).

    mdns_probe.py INTERFACE_ADDRESS NAME SERVICE_TYPE SECONDS
"""

from __future__ import annotations

import json
import sys
import threading
import time

from zeroconf import AddressResolverIPv4, AddressResolverIPv6, IPVersion, ServiceBrowser, Zeroconf, ZeroconfServiceTypes


def fqdn(name: str) -> str:
    return name if name.endswith(".") else name + "."


def main(interface: str, name: str, service_type: str, seconds: float) -> dict:
    deadline = time.monotonic() + seconds
    zc = Zeroconf(interfaces=[interface], ip_version=IPVersion.V4Only)
    try:
        # Asked again until the deadline: the box may still be taking its lease or probing its name.
        host = AddressResolverIPv4(fqdn(name))
        while not host.request(zc, 2000) and time.monotonic() < deadline:
            pass
        instances: set[str] = set()
        seen = threading.Event()

        def found(name: str, **_) -> None:
            instances.add(name)
            seen.set()

        browser = ServiceBrowser(zc, fqdn(service_type), handlers=[found])
        seen.wait(max(0.0, deadline - time.monotonic()))
        browser.cancel()
        services = {}
        for instance in sorted(instances):
            info = zc.get_service_info(fqdn(service_type), instance, timeout=5000)
            services[instance] = info and {"port": info.port, "server": info.server,
                                           "addresses": info.parsed_addresses(IPVersion.V4Only)}
        types = ZeroconfServiceTypes.find(zc=zc, timeout=5)
        # The name's IPv6 addresses, asked over IPv4 (responders publish AAAA records there too)
        host6 = AddressResolverIPv6(fqdn(name))
        host6.request(zc, 3000)
    finally:
        zc.close()
    return {"addresses": host.parsed_addresses(), "ipv6": host6.parsed_addresses(IPVersion.V6Only),
            "types": list(types), "services": services}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]))))
