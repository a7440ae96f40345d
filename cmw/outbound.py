"""Checks on the URLs the platform itself calls on someone's behalf (vendors' webhook
endpoints, an external ticket system, the CRM): the scheme, and where the host name
leads. A URL whose host resolves to a loopback, private, link-local (the clouds' metadata
service at 169.254.169.254) or otherwise non-public address is refused unless the
operator allows private targets (``MERCATO_ALLOW_PRIVATE_TARGETS``: on-premises
receivers, and the test suite's loopback servers). The check runs when the URL is saved
and again before each call, since a name can be pointed elsewhere in between."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit


class OutboundError(ValueError):
    """The URL may not be called; the message says why, in words for the person who gave it."""


def check_url(url: str, *, allow_private: bool, schemes: tuple[str, ...] = ("https",)) -> str:
    """``url`` stripped, or :class:`OutboundError`."""
    url = url.strip()
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise OutboundError("not a valid URL") from None
    if parts.scheme not in schemes:
        raise OutboundError(f"must start with {' or '.join(s + '://' for s in schemes)}")
    if not parts.hostname:
        raise OutboundError("has no host name")
    if parts.username or parts.password:
        raise OutboundError("may not carry a user name or password; the request is signed instead")
    if len(url) > 2000:
        raise OutboundError("is longer than 2,000 characters")
    check_host(parts.hostname, port or (443 if parts.scheme == "https" else 80), allow_private=allow_private)
    return url


def check_host(host: str, port: int, *, allow_private: bool) -> None:
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError):
        raise OutboundError(f"names a host, {host!r}, that does not resolve") from None
    if allow_private:
        return
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if not address.is_global or address.is_multicast:
            raise OutboundError(
                f"leads to {address} ({host}), a private, loopback or link-local address, "
                "which the platform does not call"
            )
