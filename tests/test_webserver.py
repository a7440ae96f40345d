"""The web process's gunicorn worker (cmw.webserver): kept-alive connections opened at
once are shared between the workers, and a connection is closed after its last request."""

from __future__ import annotations

import http.client
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from cmw import webserver
from tests.helpers import wait_until
from tests.servers import free_port

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[int]:
    """gunicorn with two workers (or as many as the test's ``workers`` mark says)."""
    mark = request.node.get_closest_marker("workers")
    workers = mark.args[0] if mark else 2
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "gunicorn",
            "--config", "python:cmw.webserver",
            "--bind", f"127.0.0.1:{port}",
            "--workers", str(workers),
            "tests.pid_app:app",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip

    def workers_up() -> bool:
        assert proc.poll() is None, "gunicorn exited: " + (proc.stderr.read().decode() if proc.stderr else "")
        return len(_workers(proc.pid)) == workers

    try:
        wait_until(workers_up, 60, f"gunicorn's {workers} workers")
        _masters[port] = proc.pid
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


_masters: dict[int, int] = {}


def _workers(master: int) -> list[str]:
    return subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True).stdout.split()


def _pid(connection: http.client.HTTPConnection, query: str = "") -> tuple[str, str | None]:
    connection.request("GET", f"/?{query}")
    response = connection.getresponse()
    return response.read().decode(), response.getheader("Connection")


def test_connections_opened_at_once_are_shared_between_the_workers(server: int) -> None:
    """Eight clients connect together and keep their connections, as a load generator or a
    client's connection pool does. Both workers get a fair share, and the connections are
    kept: a connection is closed only to even out the workers (when one holds two more
    than the other, see ``Worker._crowded``), which at most half of them ever need, and
    then its client reconnects.

    (gunicorn's own threaded worker fails this when the machine is busy: the worker that
    wakes first takes every waiting connection before the other one gets a core. That was
    measured under the benchmarks' load, one run in two or three; here, with a light
    load, it may pass too.)"""
    clients = 8
    connections = [http.client.HTTPConnection("127.0.0.1", server, timeout=30) for _ in range(clients)]
    for connection in connections:
        connection.connect()
    answers: list[list[tuple[str, str | None]]] = [[] for _ in range(clients)]
    start = threading.Barrier(clients)

    def client(index: int) -> None:
        start.wait()
        answers[index] = [_pid(connections[index], "cpu=50") for _ in range(5)]

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for connection in connections:
        connection.close()
    closed = [sum(header == "close" for _pid_, header in mine) for mine in answers]
    assert sum(closed) <= clients // 2, f"connections closed: {answers}"
    for mine, closes in zip(answers, closed, strict=True):
        # a connection answers from one process; a client changes process only by reconnecting
        assert len({pid for pid, _header in mine}) <= 1 + closes, f"a kept-alive connection moved: {mine}"
    per_worker = Counter(mine[-1][0] for mine in answers)
    assert len(per_worker) == 2, f"one worker served every connection: {per_worker}"
    assert min(per_worker.values()) >= 2, f"connections per worker: {per_worker}"


def test_a_new_client_is_let_in_while_every_worker_is_busy(server: int, tmp_path: Path) -> None:
    """Each worker holds two slow requests, so both hold off accepting: a new client is
    still answered at once, not when a slow request ends (gunicorn's loop sleeps up to a
    second between looks at the listening socket)."""
    slow = [http.client.HTTPConnection("127.0.0.1", server, timeout=30) for _ in range(6)]
    threads = [
        threading.Thread(target=_pid, args=(c, f"sleep=3000&mark={tmp_path}/{n}")) for n, c in enumerate(slow)
    ]
    for thread in threads:
        thread.start()
    wait_until(lambda: len(list(tmp_path.iterdir())) == len(slow), 10, "the slow requests to be in hand")
    in_hand = Counter(path.read_text() for path in tmp_path.iterdir())
    assert len(in_hand) == 2 and min(in_hand.values()) >= 2, f"slow requests per worker: {in_hand}"
    quick = http.client.HTTPConnection("127.0.0.1", server, timeout=30)
    began = time.monotonic()
    pid, _header = _pid(quick)
    waited = time.monotonic() - began
    assert pid.isdigit()
    assert waited < 0.5, f"a new client waited {waited:.2f} s"
    for thread in threads:
        thread.join(10)
    for connection in [*slow, quick]:
        connection.close()


def test_a_kept_alive_connection_is_closed_after_its_last_request(server: int) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", server, timeout=30)
    answers = [_pid(connection) for _ in range(webserver.KEEPALIVE_REQUESTS)]
    assert Counter(header for _pid_, header in answers) == {
        "keep-alive": webserver.KEEPALIVE_REQUESTS - 1,
        "close": 1,
    }
    assert answers[-1][1] == "close"
    # the client reconnects and is served
    pid, header = _pid(connection)
    assert pid.isdigit() and header == "keep-alive"
    connection.close()


@pytest.mark.workers(1)
def test_a_worker_started_later_gets_its_share_of_kept_alive_connections(server: int) -> None:
    """Eight clients keep their connections to the only worker; a second one starts (as after
    a restart, or more workers asked with TTIN). The first worker closes connections, one at
    a time, until both hold their share: the clients reconnect to the new worker."""
    clients = 8
    connections = [http.client.HTTPConnection("127.0.0.1", server, timeout=30) for _ in range(clients)]
    first = {_pid(c, "cpu=2")[0] for c in connections}
    assert len(first) == 1, first
    master = _masters[server]
    subprocess.run(["kill", "-TTIN", str(master)], check=True)
    wait_until(lambda: len(_workers(master)) == 2, 60, "the second worker")
    last: list[str] = [""] * clients
    stop = threading.Event()

    def client(index: int) -> None:
        while not stop.is_set():
            last[index] = _pid(connections[index], "cpu=2")[0]

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    try:
        wait_until(
            lambda: len(Counter(last)) == 2 and min(Counter(last).values()) >= 3,
            20,
            "the clients' connections to be shared between the workers",
        )
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
        for connection in connections:
            connection.close()
