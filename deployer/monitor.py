"""The worker's instance monitor: statistics and log lines of running instances, read over
the SSH channel the deployer already has (the platform key, the recorded host key).

Statistics come from the VM's Prometheus node exporter when one listens on its loopback
(``node_exporter_port`` of the target, 9100 by default); otherwise from ``/proc`` and
``df``, which every Linux VM has, so nothing needs installing. Log lines are read from the
files the vendor listed (``log_files``) from where the last read stopped; a rotated or
truncated file is read from its start again. Only whole lines are taken; bytes that are
not UTF-8 are kept as ``\\xNN`` escapes, never dropped.

An instance that cannot be read ``UNREACHABLE_AFTER`` times in a row is unreachable: its
customer is told (``deployment.unreachable``), and told again when it answers
(``deployment.reachable``). Samples and lines older than the retention are deleted.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import shlex
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import paramiko
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import Session

from cmw.crypto import Sealer
from cmw.db import utcnow
from cmw.events.service import emit
from deployer import ssh
from deployer.clouds import PermanentError
from deployer.engine import vm_connection
from deployer.models import CloudAccount, Deployment, DeploymentState
from deployer.telemetry import InstanceHealth, InstanceLogLine, InstanceSample

log = logging.getLogger(__name__)

UNREACHABLE_AFTER = 2
#: bytes read from one log file at one collection
READ_LIMIT = 256 * 1024
#: longest line kept; longer ones are cut with a mark
LINE_LIMIT = 8 * 1024


@dataclasses.dataclass(frozen=True)
class Retention:
    samples: dt.timedelta = dt.timedelta(days=14)
    logs: dt.timedelta = dt.timedelta(days=14)


def _proc_command(mount: str, port: int) -> str:
    return (
        f"curl -fsS --max-time 3 http://127.0.0.1:{port}/metrics 2>/dev/null && exit 0; "
        "echo @@stat; head -1 /proc/stat; echo @@mem; cat /proc/meminfo; echo @@net; cat /proc/net/dev; "
        f"echo @@df; df -P -B1 {shlex.quote(mount)} 2>/dev/null || df -P -B1 /; "
        "echo @@load; cat /proc/loadavg"
    )


def parse_exporter(text: str, mount: str) -> dict[str, Any]:
    values: dict[str, Any] = {
        "cpu_seconds": 0.0,
        "cpu_idle_seconds": 0.0,
        "network_received": 0,
        "network_sent": 0,
    }
    disks: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            if name == "node_cpu_seconds_total":
                values["cpu_seconds"] += value
                if labels.get("mode") in ("idle", "iowait"):
                    values["cpu_idle_seconds"] += value
            elif name == "node_memory_MemTotal_bytes":
                values["memory_total"] = int(value)
            elif name == "node_memory_MemAvailable_bytes":
                values["memory_available"] = int(value)
            elif name in ("node_filesystem_size_bytes", "node_filesystem_avail_bytes"):
                disks.setdefault(labels.get("mountpoint", ""), {})[name] = value
            elif name == "node_network_receive_bytes_total" and labels.get("device") != "lo":
                values["network_received"] += int(value)
            elif name == "node_network_transmit_bytes_total" and labels.get("device") != "lo":
                values["network_sent"] += int(value)
            elif name == "node_load1":
                values["load1"] = value
    disk = disks.get(mount) or disks.get("/") or {}
    if disk:
        values["disk_total"] = int(disk.get("node_filesystem_size_bytes", 0))
        values["disk_available"] = int(disk.get("node_filesystem_avail_bytes", 0))
    return values


def parse_proc(text: str) -> dict[str, Any]:
    parts: dict[str, list[str]] = {}
    current = ""
    for line in text.splitlines():
        if line.startswith("@@"):
            current = line[2:]
            parts[current] = []
        elif current:
            parts[current].append(line)
    values: dict[str, Any] = {}
    if stat := parts.get("stat"):
        ticks = [int(v) for v in stat[0].split()[1:9]]
        values["cpu_seconds"] = sum(ticks) / 100
        values["cpu_idle_seconds"] = (ticks[3] + ticks[4]) / 100
    memory = {k.strip(): v.split() for k, _, v in (line.partition(":") for line in parts.get("mem", []))}
    if "MemTotal" in memory:
        values["memory_total"] = int(memory["MemTotal"][0]) * 1024
        values["memory_available"] = int(memory.get("MemAvailable", memory["MemTotal"])[0]) * 1024
    received = sent = 0
    for line in parts.get("net", [])[2:]:
        device, _, counters = line.partition(":")
        fields = counters.split()
        if device.strip() != "lo" and len(fields) >= 9:
            received, sent = received + int(fields[0]), sent + int(fields[8])
    values.update(network_received=received, network_sent=sent)
    df = [line.split() for line in parts.get("df", [])[1:] if line.strip()]
    if df and len(df[0]) >= 4:
        values.update(disk_total=int(df[0][1]), disk_available=int(df[0][3]))
    if load := parts.get("load"):
        values["load1"] = float(load[0].split()[0])
    return values


def _lines(
    data: bytes, path: str, at: dt.datetime, deployment_id: uuid.UUID
) -> tuple[list[InstanceLogLine], int]:
    """The whole lines in ``data`` as rows, and how many bytes they took."""
    end = data.rfind(b"\n") + 1
    if end == 0:
        if len(data) < READ_LIMIT:
            return [], 0  # a line still being written: next time
        end = len(data)  # one line longer than a read: taken, cut
    chunk = data[:end]
    raws = chunk.split(b"\n")
    if chunk.endswith(b"\n"):
        raws.pop()
    rows = []
    for raw in raws:
        raw = raw.rstrip(b"\r")
        cut = len(raw) > LINE_LIMIT
        raw = raw[:LINE_LIMIT]
        try:
            text, escaped = raw.decode("utf-8"), False
        except UnicodeDecodeError:
            text, escaped = raw.decode("utf-8", "backslashreplace"), True
        rows.append(
            InstanceLogLine(
                deployment_id=deployment_id,
                path=path,
                at=at,
                text=text + (" [cut]" if cut else ""),
                escaped=escaped,
            )
        )
    return rows, end


class Monitor:
    def __init__(
        self,
        session_factory: Callable[[], Session],
        sealer: Sealer,
        retention: Retention | None = None,
        threads: int = 8,
    ) -> None:
        self.session_factory, self.sealer = session_factory, sealer
        self.retention = retention or Retention()
        self.threads = threads

    def run(self, now: dt.datetime | None = None) -> dict[str, int]:
        """Collect every running instance once; delete what is past retention."""
        now = now or utcnow()
        with self.session_factory() as session:
            ids = list(
                session.scalars(
                    sa.select(Deployment.id)
                    .join(CloudAccount, CloudAccount.id == Deployment.cloud_account_id)
                    .where(Deployment.state == DeploymentState.RUNNING, CloudAccount.provider != "dummy")
                )
            )
        with ThreadPoolExecutor(max_workers=max(1, min(self.threads, len(ids)))) as pool:
            outcomes = list(pool.map(lambda i: self.collect(i, now), ids))
        self.expire(now)
        return {"instances": len(ids), "reachable": sum(o is True for o in outcomes)}

    def expire(self, now: dt.datetime) -> None:
        with self.session_factory() as session:
            session.execute(sa.delete(InstanceSample).where(InstanceSample.at < now - self.retention.samples))
            session.execute(sa.delete(InstanceLogLine).where(InstanceLogLine.at < now - self.retention.logs))
            session.commit()

    def _claim(self, session: Session, deployment_id: uuid.UUID) -> InstanceHealth | None:
        if session.get(InstanceHealth, deployment_id) is None:
            session.add(InstanceHealth(deployment_id=deployment_id, log_positions={}))
            try:
                session.commit()
            except sa.exc.IntegrityError:
                session.rollback()
        return session.scalar(
            sa.select(InstanceHealth)
            .where(InstanceHealth.deployment_id == deployment_id)
            .with_for_update(skip_locked=True)
        )

    def collect(self, deployment_id: uuid.UUID, now: dt.datetime | None = None) -> bool | None:
        """Read one instance: True (read), False (not reachable), None (another worker has it)."""
        now = now or utcnow()
        with self.session_factory() as session:
            health = self._claim(session, deployment_id)
            deployment = session.get(Deployment, deployment_id)
            if health is None or deployment is None or deployment.cloud_account_id is None:
                return None
            account = session.get(CloudAccount, deployment.cloud_account_id)
            assert account is not None
            try:
                values, source, lines, positions = self._read(
                    deployment, account, dict(health.log_positions), now
                )
            except (
                OSError,
                EOFError,
                paramiko.SSHException,
                ssh.HostKeyMismatch,
                PermanentError,
                ValueError,
            ) as exc:
                error = f"{type(exc).__name__}: {exc}"[:1000]
                session.add(InstanceSample(deployment_id=deployment_id, at=now, reachable=False, error=error))
                self._failed(session, deployment, health, error, now)
                session.commit()
                return False
            session.add(
                InstanceSample(deployment_id=deployment_id, at=now, reachable=True, source=source, **values)
            )
            session.add_all(lines)
            health.log_positions = positions
            health.last_collected_at = now
            if not health.reachable:
                self._event(session, deployment, "deployment.reachable", since=health.unreachable_since)
            health.reachable, health.failures, health.unreachable_since, health.last_error = (
                True,
                0,
                None,
                None,
            )
            session.commit()
            return True

    def _failed(
        self, session: Session, deployment: Deployment, health: InstanceHealth, error: str, now: dt.datetime
    ) -> None:
        health.failures += 1
        health.last_error = error
        if health.unreachable_since is None:
            health.unreachable_since = now
        if health.reachable and health.failures >= UNREACHABLE_AFTER:
            health.reachable = False
            self._event(
                session, deployment, "deployment.unreachable", since=health.unreachable_since, error=error
            )

    @staticmethod
    def _event(session: Session, deployment: Deployment, topic: str, **extra: Any) -> None:
        emit(
            session,
            topic,
            {
                "deployment_id": str(deployment.id),
                "subscription_id": str(deployment.subscription_id),
                "customer_id": str(deployment.customer_id),
                "product_id": str(deployment.product_id),
                "vendor_id": str(deployment.vendor_id),
                "address": deployment.address,
                **{k: (v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in extra.items()},
            },
            marketplace_id=deployment.marketplace_id,
        )

    def _read(
        self, deployment: Deployment, account: CloudAccount, positions: dict[str, Any], now: dt.datetime
    ) -> tuple[dict[str, Any], str, list[InstanceLogLine], dict[str, Any]]:
        spec = deployment.spec or {}
        mount = account.data_mount_point or "/"
        lines: list[InstanceLogLine] = []
        with vm_connection(account, deployment, self.sealer)() as conn:
            _status, raw = conn.read(
                _proc_command(mount, int(spec.get("node_exporter_port") or 9100)), timeout=30
            )
            text = raw.decode("utf-8", "replace")
            if text.startswith("@@"):
                values, source = parse_proc(text), "proc"
            else:
                values, source = parse_exporter(text, mount), "node_exporter"
            for path in spec.get("log_files") or []:
                lines += self._read_log(conn, deployment.id, str(path), positions, now)
            if deployment.host_key is None:
                deployment.host_key = conn.host_key
        return values, source, lines, positions

    @staticmethod
    def _read_log(
        conn: ssh.Session, deployment_id: uuid.UUID, path: str, positions: dict[str, Any], now: dt.datetime
    ) -> list[InstanceLogLine]:
        quoted = shlex.quote(path)
        status, head = conn.read(f"stat -c '%i %s' {quoted}", timeout=15)
        if status != 0:
            return []  # not there (yet): nothing to read
        inode, size = (int(v) for v in head.split()[:2])
        known = positions.get(path) or {}
        offset = int(known.get("offset", 0))
        if known.get("inode") != inode or size < offset:
            offset = 0  # rotated or truncated: the new file from its start
        if size == offset:
            positions[path] = {"inode": inode, "offset": offset}
            return []
        _status, data = conn.read(f"tail -c +{offset + 1} {quoted} | head -c {READ_LIMIT}", timeout=30)
        rows, used = _lines(data, path, now, deployment_id)
        positions[path] = {"inode": inode, "offset": offset + used}
        return rows
