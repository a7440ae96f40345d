"""Libcloud drivers for cloud accounts, and every provider call timed and classified.

``driver_for(account, credentials)`` builds the account's driver (kept per process, so
the in-memory dummy driver keeps its machines between steps). ``ProviderCalls`` runs
each call, adds its duration to a tally (the platform's own overhead is what is left),
and turns failures into :class:`TransientError` (retried with back-off) or
:class:`PermanentError` (rolled back). Tests may install a fault injector that makes a
chosen call fail.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests
from libcloud.common.exceptions import BaseHTTPError, RateLimitReachedError
from libcloud.common.types import InvalidCredsError
from libcloud.compute.base import NodeDriver, NodeSize
from libcloud.compute.drivers.ec2 import BaseEC2NodeDriver
from libcloud.compute.providers import DRIVERS, get_driver

from cmw.monitoring import metrics
from cmw.outbound import OutboundError, UnresolvedHost, check_host, check_url
from deployer.models import CloudAccount

#: the in-memory driver of the embedded default
DUMMY = "dummy"

_extra_drivers: dict[str, type[NodeDriver]] = {}
_drivers: dict[tuple[str, str], NodeDriver] = {}
_drivers_lock = threading.Lock()


class DeployError(Exception):
    """A step did not succeed."""


class TransientError(DeployError):
    """Worth trying again later: rate limits, time-outs, provider 5xx, a VM not ready yet."""


class PermanentError(DeployError):
    """Trying again will not help: bad credentials, no size fits, an image that is gone."""


class EndpointRefused(PermanentError):
    """A host or URL among an account's settings leads where the platform does not call;
    ``field`` names the setting."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def check_endpoints(
    credentials: dict[str, Any],
    options: dict[str, Any],
    ssh_host: str | None = None,
    ssh_port: int | None = None,
    *,
    allow_private: bool | None,
    saving: bool = True,
) -> None:
    """Every host and URL among an account's settings that the driver (or the SSH step)
    would call, through :mod:`cmw.outbound`: never link-local or a metadata service, and
    not private or loopback unless ``allow_private`` (None: the operator's setting). A
    name that does not resolve is refused when ``saving``; later it is left to the driver
    (a passing DNS failure is worth a retry, not a failed deployment)."""
    targets: list[tuple[str, str, str, int | None]] = []  # field, label, URL or host, port
    for field_name, values in (("driver_options", options), ("credentials", credentials)):
        for name, value in values.items():
            if not isinstance(value, str):
                continue
            if value.strip().lower().startswith(("http://", "https://")):
                targets.append((field_name, f"{name}: ", value, None))
            elif name == "host" or name.endswith("_host"):
                try:
                    targets.append((field_name, f"{name}: ", value, int(options.get("port") or 443)))
                except ValueError:
                    raise EndpointRefused("driver_options", "port: a number") from None
    if ssh_host:
        targets.append(("ssh_host", "", ssh_host, int(ssh_port or 22)))
    for field_name, label, target, port in targets:
        try:
            if port is None:
                check_url(target, allow_private=allow_private, schemes=("http", "https"))
            else:
                check_host(target, port, allow_private=allow_private)
        except UnresolvedHost as exc:
            if saving:
                raise EndpointRefused(field_name, f"{label}the address {exc}") from None
        except OutboundError as exc:
            raise EndpointRefused(field_name, f"{label}the address {exc}") from None


def private_allowed(account: CloudAccount) -> bool | None:
    """The platform's own accounts may lead to a private cloud; a customer's follow the
    operator's setting (None)."""
    return True if account.owner_id is None else None


def check_account(account: CloudAccount, credentials: dict[str, Any], *, saving: bool) -> None:
    """:func:`check_endpoints` on a saved account's settings."""
    check_endpoints(
        credentials,
        dict(account.driver_options or {}),
        account.ssh_host,
        account.ssh_port,
        allow_private=private_allowed(account),
        saving=saving,
    )


def register_driver(provider: str, driver_class: type[NodeDriver]) -> None:
    """Use ``driver_class`` for ``provider`` (tests register an EC2 driver fit for moto)."""
    _extra_drivers[provider] = driver_class
    forget_drivers()


def forget_drivers() -> None:
    with _drivers_lock:
        _drivers.clear()


def providers() -> list[str]:
    """Every Libcloud compute provider name (and any registered one)."""
    return sorted({str(p) for p in DRIVERS} | set(_extra_drivers))


def driver_class(provider: str) -> type[NodeDriver]:
    if provider in _extra_drivers:
        return _extra_drivers[provider]
    if provider not in {str(p) for p in DRIVERS}:
        raise PermanentError(f"{provider!r} is not a Libcloud compute provider")
    found: type[NodeDriver] = get_driver(provider)
    return found


def make_driver(
    provider: str, credentials: dict[str, Any], region: str | None, options: dict[str, Any]
) -> NodeDriver:
    """A new driver: ``key`` and ``secret`` positionally, the rest as keyword arguments."""
    cls = driver_class(provider)
    creds = dict(credentials)
    key = creds.pop("key", None)
    secret = creds.pop("secret", None)
    kwargs = {**creds, **options}
    if region and "region" not in kwargs and provider != DUMMY:
        kwargs["region"] = region
    args: list[Any] = [key if key is not None else 0]
    if secret is not None:
        args.append(secret)
    try:
        driver: NodeDriver = cls(*args, **kwargs)
    except TypeError as exc:
        raise PermanentError(f"the {provider} driver does not take these settings: {exc}") from None
    return driver


def driver_for(account: CloudAccount, credentials: dict[str, Any]) -> NodeDriver:
    """The account's driver, built once per process and account version, after its
    endpoints are checked again (a name may lead elsewhere than when it was saved): the
    platform's own accounts may be private, customers' only if the operator allows."""
    key = (str(account.id), account.updated_at.isoformat())
    with _drivers_lock:
        found = _drivers.get(key)
        if found is None:
            check_account(account, credentials, saving=False)
            found = make_driver(
                account.provider, credentials, account.region, dict(account.driver_options or {})
            )
            for stale in [k for k in _drivers if k[0] == key[0]]:
                del _drivers[stale]
            _drivers[key] = found
        return found


# ------------------------------------------------------------------ sizes
def size_cores(size: NodeSize) -> int | None:
    extra = size.extra or {}
    for name in ("cpu", "vcpu", "vcpus", "cores", "cpus"):
        value = extra.get(name)
        if value is not None:
            try:
                return int(value)
            except (TypeError, ValueError):
                continue
    value = getattr(size, "vcpus", None)
    return int(value) if isinstance(value, int) else None


def size_architecture(size: NodeSize) -> str | None:
    """``arm64`` or ``x86_64`` where the provider says (EC2: the processor), else None."""
    extra = size.extra or {}
    processor = str(extra.get("physicalProcessor") or "")
    if processor:
        return "arm64" if "graviton" in processor.lower() else "x86_64"
    arch = extra.get("architecture") or extra.get("arch")
    return str(arch) if arch else None


def match_size(sizes: list[NodeSize], cores: int, ram_mib: int, architecture: str | None = None) -> NodeSize:
    """The smallest size with at least ``cores`` and ``ram_mib`` that runs the image's
    ``architecture`` (unknown cores or architecture count as fitting)."""
    fitting = []
    for size in sizes:
        have = size_cores(size)
        arch = size_architecture(size) if architecture else None
        if (
            (size.ram or 0) >= ram_mib
            and (have is None or have >= cores)
            and (arch is None or arch == architecture)
        ):
            fitting.append(size)
    if not fitting:
        offered = ", ".join(f"{s.id} ({size_cores(s) or '?'} cores, {s.ram} MiB)" for s in sizes[:20])
        raise PermanentError(
            f"no size has {cores} cores and {ram_mib} MiB of RAM; the cloud offers {offered}"
        )
    # a size whose price the driver does not know (None, or 0 in Libcloud's EC2 price list)
    # comes after those whose price it knows
    return min(
        fitting,
        key=lambda s: (size_cores(s) or 0, s.ram or 0, not s.price, s.price or 0, str(s.id)),
    )


#: volume states meaning "attached to a VM", as the drivers spell them
ATTACHED_STATES = ("inuse", "in-use", "attached")


def is_attached(volume: Any) -> bool:
    return bool((volume.extra or {}).get("instance_id")) or str(volume.state).lower() in ATTACHED_STATES


def wait_detached(calls: ProviderCalls, driver: NodeDriver, volume_id: str, timeout: float = 60.0) -> None:
    """Wait until the volume is neither attached nor detaching (a disk is deleted only then)."""
    filters = {"ex_filters": {"volume-id": volume_id}} if isinstance(driver, BaseEC2NodeDriver) else {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        volume = next(
            (v for v in calls("list_volumes", driver.list_volumes, **filters) if v.id == volume_id), None
        )
        if volume is None or not (is_attached(volume) or str(volume.state).lower() == "detaching"):
            return
        time.sleep(1.0)
    raise TransientError(f"disk {volume_id} is still attached")


def ec2_create_volume(driver: Any, size_gib: int, zone: str, tags: dict[str, str]) -> Any:
    """CreateVolume with its tags in the same call (``TagSpecification``).

    Libcloud's ``create_volume`` tags in a second call; a worker that dies between the two
    leaves a volume nobody can find again. Made and tagged at once, it is always found.
    """
    params: dict[str, Any] = {
        "Action": "CreateVolume",
        "Size": str(size_gib),
        "AvailabilityZone": zone,
        "VolumeType": "gp3",
        "TagSpecification.1.ResourceType": "volume",
    }
    for n, (key, value) in enumerate(tags.items(), start=1):
        params[f"TagSpecification.1.Tag.{n}.Key"] = key
        params[f"TagSpecification.1.Tag.{n}.Value"] = value
    response = driver.connection.request(driver.path, params=params).object
    return driver._to_volume(response, name=tags.get("Name"))


# ------------------------------------------------------------------ calls
_TRANSIENT_WORDS = (
    "requestlimitexceeded",
    "throttl",
    "rate limit",
    "internalerror",
    "internal error",
    "serviceunavailable",
    "unavailable",
    "timed out",
    "timeout",
    "temporarily",
    "try again",
    "connection reset",
    "connection refused",
)


def classify(exc: BaseException) -> DeployError:
    """Transient or permanent, with a readable reason."""
    if isinstance(exc, DeployError):
        return exc
    reason = f"{type(exc).__name__}: {exc}".strip()
    if isinstance(exc, InvalidCredsError):
        return PermanentError(f"the cloud refused the credentials ({exc})")
    if isinstance(exc, RateLimitReachedError):
        return TransientError(reason)
    if isinstance(exc, BaseHTTPError) and (exc.code == 429 or (exc.code or 0) >= 500):
        return TransientError(reason)
    if isinstance(
        exc,
        socket.timeout
        | TimeoutError
        | ConnectionError
        | ssl.SSLError
        | requests.ConnectionError
        | requests.Timeout,
    ):
        return TransientError(reason)
    if any(word in str(exc).lower() for word in _TRANSIENT_WORDS):
        return TransientError(reason)
    return PermanentError(reason)


#: tests only: called with the call's name and ``"before"`` or ``"after"`` around each
#: call; raise to inject a fault (or, after, to simulate a crash once the cloud acted)
FaultInjector = Callable[[str, str], None]
_fault_injector: FaultInjector | None = None


def set_fault_injector(injector: FaultInjector | None) -> FaultInjector | None:
    """Install (or remove, with None) the tests' fault injector; returns the previous one."""
    global _fault_injector
    previous, _fault_injector = _fault_injector, injector
    return previous


@dataclass
class ProviderCalls:
    """Runs provider (and SSH) calls, timing them and classifying their failures."""

    #: the cloud account's slug, labelling the calls' metrics
    account: str = "-"
    seconds: float = 0.0
    calls: list[str] = field(default_factory=list)

    def __call__(self, name: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        self.calls.append(name)
        try:
            if _fault_injector is not None:
                _fault_injector(name, "before")
            result = fn(*args, **kwargs)
            if _fault_injector is not None:
                _fault_injector(name, "after")
            return result
        except NotImplementedError:
            raise
        except Exception as exc:
            error = classify(exc)
            kind = "transient" if isinstance(error, TransientError) else "permanent"
            metrics.PROVIDER_ERRORS.labels(self.account, name, kind).inc()
            raise error from exc
        finally:
            elapsed = time.perf_counter() - started
            self.seconds += elapsed
            metrics.PROVIDER_CALLS.labels(self.account, name).observe(elapsed)
