"""`make run` on the embedded defaults: it starts, /healthz answers, the demo login works,
the worker relays the outbox over the filesystem transport, and it stops on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import threading
from pathlib import Path

import pytest
import requests

from cmw import demo
from tests.helpers import wait_until

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_make_run_starts_the_platform_with_demo_logins(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MERCATO_")}
    env.update({"MERCATO_DATA_DIR": str(tmp_path / "var"), "HOST": "127.0.0.1", "PORT": str(port)})
    proc = subprocess.Popen(
        ["make", "--no-print-directory", "run"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(iter(proc.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    base = f"http://127.0.0.1:{port}"
    try:

        def healthy() -> bool:
            assert proc.poll() is None, "make run exited early:\n" + "".join(output)
            try:
                return requests.get(f"{base}/healthz", timeout=5).status_code == 200
            except requests.RequestException:  # not listening yet, or still starting up
                return False

        wait_until(healthy, 120, "make run to answer /healthz")
        health = requests.get(f"{base}/healthz", timeout=5).json()
        assert health["checks"]["database"]["ok"] and health["checks"]["broker"]["ok"]

        text = "".join(output)
        assert f"http://127.0.0.1:{port}/" in text
        admin = next(login for login in demo.LOGINS if login.role == "admin")
        assert admin.email in text and admin.password in text

        session = requests.Session()
        signed_in = session.post(
            f"{base}/api/v1/session", json={"email": admin.email, "password": admin.password}, timeout=10
        )
        assert signed_in.status_code == 200, signed_in.text
        assert "admin" in signed_in.json()["roles"]
        me = session.get(f"{base}/api/v1/me", timeout=5).json()
        assert me["user"]["email"] == admin.email
        home = requests.get(f"{base}/", timeout=5)
        assert home.status_code == 200 and "Mercato" in home.text

        # The worker relays the demo's events through kombu's filesystem transport.
        database = tmp_path / "var" / "mercato.db"

        def outbox_drained() -> bool:
            with sqlite3.connect(database) as conn:
                total, waiting = conn.execute(
                    "SELECT count(*), count(*) FILTER (WHERE published_at IS NULL) FROM outbox"
                ).fetchone()
            return total > 0 and waiting == 0

        try:
            wait_until(outbox_drained, 120, "the worker to relay the outbox")
        except AssertionError as exc:  # what web and worker printed says why
            raise AssertionError(f"{exc}; make run printed:\n" + "".join(output)[-6000:]) from None
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    wait_until(lambda: not _group_alive(proc.pid), 30, "web and worker to stop")
