"""Network facts about this machine's own addresses (no server, no client)."""

from __future__ import annotations

import ipaddress
import socket


def is_loopback(host: str) -> bool:
    """Whether a server listening on ``host`` can be reached from this machine only.

    Only 127.0.0.0/8 and ::1 are loopback; ``""`` (like ``0.0.0.0`` and ``::``) listens on
    every interface. A name counts when every address it resolves to is loopback
    (``localhost``, normally).
    """
    if not host:
        return False
    try:
        return is_loopback_address(host)
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    return bool(infos) and all(is_loopback_address(str(info[4][0])) for info in infos)


def is_loopback_address(text: str) -> bool:
    """Whether ``text`` is a loopback address (127.0.0.0/8, ::1, or IPv4 loopback mapped).

    Raises:
        ValueError: ``text`` is not an address.
    """
    address = ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone ("fe80::1%eth0")
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback
