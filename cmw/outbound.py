"""Checks on the URLs and hosts the platform itself calls on someone's behalf (vendors'
webhook endpoints, an external ticket system, the CRM, cloud accounts' endpoints and SSH
overrides): the scheme, and where the host name leads.

Two kinds of address are refused:

- link-local addresses and the clouds' metadata services (169.254.0.0/16 with AWS's,
  Azure's, Google's and Oracle's 169.254.169.254, ``fe80::/10``, AWS's ``fd00:ec2::254``,
  Alibaba's 100.100.100.200), and addresses that are not one host (unspecified,
  multicast, broadcast), for every caller, unless the operator sets
  ``MERCATO_ALLOW_LINK_LOCAL_TARGETS`` (a cloud that really answers there);
- loopback, private and other non-public addresses, where the caller says so: webhooks,
  the ticket forwarder and customers' own cloud accounts, unless the operator sets
  ``MERCATO_ALLOW_PRIVATE_TARGETS`` (on-premises receivers, the test suite's loopback
  servers). The platform's own cloud accounts, which the admins add, may be private (a
  private cloud), never link-local.

The check runs when a URL is saved and again before it is called (a webhook delivery, a
cloud driver being built), since a name can be pointed elsewhere in between.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
from urllib.parse import urlsplit

#: the metadata services of the clouds that are not in a link-local network
METADATA_ADDRESSES = frozenset(
    {
        ipaddress.ip_address("fd00:ec2::254"),  # AWS, over IPv6
        ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
    }
)

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class OutboundError(ValueError):
    """The URL may not be called; the message says why, in words for the person who gave it."""


class UnresolvedHost(OutboundError):
    """The host name does not resolve (now): it leads nowhere, forbidden or not."""


@dataclasses.dataclass
class Policy:
    """The operator's settings, for checks made where no caller passes them (a cloud
    driver being built in the worker). Set by ``create_app`` from the config."""

    allow_private: bool = False
    allow_link_local: bool = False


policy = Policy()


def configure(*, allow_private: bool, allow_link_local: bool) -> None:
    policy.allow_private = allow_private
    policy.allow_link_local = allow_link_local


def check_url(url: str, *, allow_private: bool | None = None, schemes: tuple[str, ...] = ("https",)) -> str:
    """``url`` stripped, or :class:`OutboundError`. ``allow_private`` None: the policy's."""
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


def check_host(host: str, port: int, *, allow_private: bool | None = None) -> None:
    """:class:`OutboundError` unless every address ``host`` resolves to may be called."""
    if allow_private is None:
        allow_private = policy.allow_private
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError):
        raise UnresolvedHost(f"names a host, {host!r}, that does not resolve") from None
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if is_link_local_or_metadata(address):
            if not policy.allow_link_local:
                raise OutboundError(
                    f"leads to {address} ({host}), a link-local or cloud metadata address, "
                    "which the platform does not call"
                )
        elif not allow_private and not address.is_global:
            raise OutboundError(
                f"leads to {address} ({host}), a private or loopback address, "
                "which the platform does not call"
            )


def is_link_local_or_metadata(address: IpAddress) -> bool:
    """Link-local, a metadata service, or not one host (also behind an IPv4-mapped IPv6)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return (
        address.is_link_local
        or address in METADATA_ADDRESSES
        or address.is_unspecified
        or address.is_multicast
        or address == ipaddress.IPv4Address("255.255.255.255")
    )
