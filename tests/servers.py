"""Real servers for the test suite, bound only to 127.0.0.1 on free ports.

A pytest plugin (loaded by ``tests/conftest.py``) with three session-scoped fixtures:

* ``moto_server`` -- moto's threaded server, S3 and EC2 (and every other service) on
  one port;
* ``sshd_server`` -- OpenSSH's ``sshd`` run as its own process with its own config,
  host key and ``authorized_keys`` in a temporary directory;
* ``smtp_server`` -- an aiosmtpd server that records every message it receives and can
  be stopped and started again on the same port for fault-injection tests;
* ``https_receiver`` -- an HTTPS server (its certificate from a throwaway CA made with
  trustme) that records every request and answers with the statuses a test scripts.

Each is started on first use and stopped when the session ends. Nothing here sends
traffic to any address other than 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import http.client
import http.server
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.controller import Controller
from moto.server import ThreadedMotoServer

LOOPBACK = "127.0.0.1"
SSHD = Path("/usr/sbin/sshd")
SSH_KEYGEN = "ssh-keygen"
INSTALL_SSHD = (
    "Run `scripts/ensure-system-packages test` (or `apt-get install openssh-server`) and try again."
)
READY_TIMEOUT = 15.0

FAKE_AWS_ACCESS_KEY_ID = "AKIDTEST"
FAKE_AWS_SECRET_ACCESS_KEY = "test-secret"
FAKE_AWS_REGION = "us-east-1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing was listening on a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


# ---------------------------------------------------------------------- moto (AWS)
# moto 5.2 serialises EC2 responses with botocore's model, whose xmlNamespace lacks the
# trailing slash that real EC2 sends (``http://ec2.amazonaws.com/doc/2016-11-15/``).
# Apache Libcloud's EC2 driver looks elements up in the real namespace, so without this
# fix every list it parses from moto comes back empty.
_EC2_NAMESPACE_FROM_MOTO = b'xmlns="http://ec2.amazonaws.com/doc/2016-11-15"'
_EC2_NAMESPACE_FROM_AWS = b'xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"'

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class _Ec2NamespaceFix:
    """WSGI middleware giving EC2 responses the XML namespace real EC2 uses, and its errors
    the shape real EC2 sends: ``<Error>`` holds a ``Code`` and a ``Message`` (moto adds a
    ``Type``, and Libcloud then fails to read why a call was refused)."""

    def __init__(self, app: WsgiApp) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        captured: dict[str, Any] = {}

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[..., Any]:
            captured.update(status=status, headers=headers, exc_info=exc_info)
            return lambda _data: None

        chunks = self.app(environ, capture)
        try:
            body = b"".join(chunks)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        headers: list[tuple[str, str]] = captured["headers"]
        if _EC2_NAMESPACE_FROM_MOTO in body or b"<Errors><Error>" in body:
            body = body.replace(_EC2_NAMESPACE_FROM_MOTO, _EC2_NAMESPACE_FROM_AWS)
            body = re.sub(rb"<Type>[A-Za-z]*</Type>(?=</Error>)", b"", body)
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
            headers.append(("Content-Length", str(len(body))))
        start_response(captured["status"], headers, captured["exc_info"])
        return [body]


@dataclass
class MotoServer:
    """A running moto server; every AWS service answers at ``endpoint_url``."""

    host: str
    port: int
    server: ThreadedMotoServer = field(repr=False)
    access_key_id: str = FAKE_AWS_ACCESS_KEY_ID
    secret_access_key: str = FAKE_AWS_SECRET_ACCESS_KEY
    region: str = FAKE_AWS_REGION

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _control(self, path: str, body: bytes = b"") -> None:
        """POST to moto's control API (``/moto-api/...``)."""
        # http.client directly: no proxy settings from the environment can reroute it.
        connection = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            connection.request("POST", path, body=body)
            response = connection.getresponse()
            response.read()
        finally:
            connection.close()
        if response.status != 200:
            raise RuntimeError(f"moto {path} answered {response.status}")

    def reset(self) -> None:
        """Forget every bucket, instance and other resource created so far."""
        self._control("/moto-api/reset")

    @contextmanager
    def checking_credentials(self) -> Iterator[None]:
        """Inside: moto refuses credentials IAM does not know (it accepts anything outside)."""
        self._control("/moto-api/reset-auth", b"0")
        try:
            yield
        finally:
            self._control("/moto-api/reset-auth", b"inf")

    def libcloud_ec2_kwargs(self) -> dict[str, Any]:
        """Keyword arguments pointing Libcloud's EC2 driver here (after key and secret).

        ``signature_version="4"`` matters: Libcloud signs us-east-1 requests with
        SigV2 by default, which carries no Authorization header, and moto then cannot
        tell the request is for EC2 and answers it as S3.
        """
        return {
            "region": self.region,
            "host": self.host,
            "port": self.port,
            "secure": False,
            "signature_version": "4",
        }

    def boto3_client(self, service_name: str, **kwargs: Any) -> Any:
        """A boto3 client for ``service_name`` pointed at this server with fake credentials."""
        import boto3

        options: dict[str, Any] = {
            "endpoint_url": self.endpoint_url,
            "region_name": self.region,
            "aws_access_key_id": self.access_key_id,
            "aws_secret_access_key": self.secret_access_key,
            **kwargs,
        }
        return boto3.session.Session().client(service_name, **options)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """moto's threaded server on 127.0.0.1, on a port the OS picks."""
    with running_moto() as server:
        yield server


@contextmanager
def running_moto() -> Iterator[MotoServer]:
    """moto's server with the EC2 namespace fix, stopped at the end (also for benchmarks)."""
    server = ThreadedMotoServer(ip_address=LOOPBACK, port=0, verbose=False)
    server.start()
    try:
        # Wrap the app the WSGI server dispatches to (werkzeug calls ``server.app``).
        wsgi_server = server._server
        assert wsgi_server is not None
        wsgi_server.app = _Ec2NamespaceFix(wsgi_server.app)
        host, port = server.get_host_and_port()
        if host != LOOPBACK:
            raise RuntimeError(f"moto bound to {host}, expected {LOOPBACK}")
        yield MotoServer(host=host, port=port, server=server)
    finally:
        server.stop()


# ---------------------------------------------------------------------- sshd
def _keygen(path: Path, comment: str) -> str:
    """Make an ed25519 key pair without a passphrase at ``path``; return the public line."""
    subprocess.run(
        [SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return path.with_name(path.name + ".pub").read_text().strip()


def _wait_for_ssh_banner(host: str, port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    """Poll until ``host:port`` greets with an SSH-2.0 banner, or fail with sshd's log."""
    deadline = time.monotonic() + READY_TIMEOUT
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"sshd exited with status {process.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection((host, port), timeout=1.0) as sock:
                sock.settimeout(max(0.1, min(2.0, deadline - time.monotonic())))
                if sock.recv(256).startswith(b"SSH-2.0"):
                    return
        except OSError as exc:
            last_error = exc
        time.sleep(0.02)
    raise TimeoutError(
        f"sshd on {host}:{port} did not answer within {READY_TIMEOUT}s ({last_error}):\n{log.read_text()}"
    )


@dataclass
class SshdServer:
    """A running ``sshd`` accepting ``username`` with the key at ``client_key_path``."""

    host: str
    port: int
    username: str
    client_key_path: Path
    client_public_key: str
    host_key_path: Path
    host_public_key: str
    authorized_keys_path: Path
    known_hosts_path: Path
    config_path: Path
    log_path: Path
    process: subprocess.Popen[bytes] = field(repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def known_hosts_line(self) -> str:
        """The server's line for a ``known_hosts`` file (``[host]:port`` form)."""
        return f"[{self.host}]:{self.port} {self.host_public_key}"

    def authorize_key(self, public_key_line: str) -> None:
        """Let the holder of another key log in as ``username``."""
        line = public_key_line.strip()
        if not line or "\n" in line:
            raise ValueError("expected exactly one public key line")
        with self._lock, self.authorized_keys_path.open("a") as keys:
            keys.write(line + "\n")


def _sshd_config(port: int, host_key: Path, authorized_keys: Path, pid_file: Path, username: str) -> str:
    return "\n".join(
        [
            f"Port {port}",
            f"ListenAddress {LOOPBACK}",
            f"HostKey {host_key}",
            f"PidFile {pid_file}",
            # the "VM"'s own users (the vendor support user, mcs-*) have their keys at home
            f"AuthorizedKeysFile {authorized_keys} .ssh/authorized_keys",
            f"AllowUsers {username} mcs-*",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes",
            "UsePAM no",
            "StrictModes no",
            "PermitRootLogin prohibit-password",
            "UseDNS no",
            "PrintMotd no",
            "LogLevel INFO",
            "Subsystem sftp internal-sftp",
            "",
        ]
    )


@pytest.fixture(scope="session")
def sshd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshdServer]:
    """OpenSSH's sshd, as its own process with its own config, on 127.0.0.1."""
    try:
        with running_sshd(tmp_path_factory.mktemp("sshd")) as server:
            yield server
    except SshdUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)


class SshdUnavailable(RuntimeError):
    """sshd is not installed or would not start; the message says what to do."""


@contextmanager
def running_sshd(workdir: Path) -> Iterator[SshdServer]:
    """sshd on 127.0.0.1 with its keys and config in ``workdir``, stopped at the end
    (also used by ``bench.deployer``)."""
    if not SSHD.exists():
        raise SshdUnavailable(f"{SSHD} is missing. {INSTALL_SSHD}")
    if shutil.which(SSH_KEYGEN) is None:
        raise SshdUnavailable(f"{SSH_KEYGEN} is missing. {INSTALL_SSHD}")
    if os.geteuid() == 0:
        # sshd's privilege separation directory; it refuses to start without it.
        Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)

    username = _current_user()
    host_key = workdir / "ssh_host_ed25519_key"
    host_public_key = _keygen(host_key, "mercato-test-sshd-host")
    client_key = workdir / "client_ed25519"
    client_public_key = _keygen(client_key, "mercato-test-client")
    authorized_keys = workdir / "authorized_keys"
    authorized_keys.write_text(client_public_key + "\n")
    config = workdir / "sshd_config"
    log = workdir / "sshd.log"

    process: subprocess.Popen[bytes] | None = None
    port = 0
    error: Exception | None = None
    for _attempt in range(3):  # another process may grab the free port before sshd does
        port = free_port()
        config.write_text(_sshd_config(port, host_key, authorized_keys, workdir / "sshd.pid", username))
        subprocess.run([str(SSHD), "-t", "-f", str(config)], check=True, capture_output=True, timeout=30)
        with log.open("ab") as log_file:
            process = subprocess.Popen(
                [str(SSHD), "-D", "-e", "-f", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        try:
            _wait_for_ssh_banner(LOOPBACK, port, process, log)
            error = None
            break
        except (RuntimeError, TimeoutError) as exc:
            error = exc
            _stop_process(process)
            process = None
    if process is None:
        raise SshdUnavailable(f"could not start sshd: {error}")

    known_hosts = workdir / "known_hosts"
    server = SshdServer(
        host=LOOPBACK,
        port=port,
        username=username,
        client_key_path=client_key,
        client_public_key=client_public_key,
        host_key_path=host_key,
        host_public_key=host_public_key,
        authorized_keys_path=authorized_keys,
        known_hosts_path=known_hosts,
        config_path=config,
        log_path=log,
        process=process,
    )
    known_hosts.write_text(server.known_hosts_line() + "\n")
    try:
        yield server
    finally:
        _stop_process(process)


def _current_user() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name


def _stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


# ---------------------------------------------------------------------- SMTP
@dataclass(frozen=True)
class ReceivedMessage:
    """One message as the SMTP server received it."""

    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    data: bytes = field(repr=False)


class _RecordingHandler:
    """aiosmtpd handler appending every message to its server's list."""

    def __init__(self, sink: SmtpServer) -> None:
        self._sink = sink

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        content = envelope.original_content or envelope.content
        if isinstance(content, str):
            content = content.encode("utf-8")
        parsed = email.message_from_bytes(content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        self._sink._record(
            ReceivedMessage(
                mail_from=envelope.mail_from,
                rcpt_tos=list(envelope.rcpt_tos),
                message=parsed,
                data=content,
            )
        )
        return "250 OK"


class SmtpServer:
    """An aiosmtpd server on 127.0.0.1 that keeps what it receives.

    ``stop()`` takes it down and ``start()`` brings it back on the same port; the
    messages received so far survive both.
    """

    def __init__(self, host: str = LOOPBACK, port: int | None = None) -> None:
        self.host = host
        self.port = free_port() if port is None else port
        self._messages: list[ReceivedMessage] = []
        self._condition = threading.Condition()
        self._controller: Controller | None = None

    @property
    def messages(self) -> list[ReceivedMessage]:
        """A snapshot of the messages received so far, oldest first."""
        with self._condition:
            return list(self._messages)

    @property
    def running(self) -> bool:
        return self._controller is not None

    def _record(self, received: ReceivedMessage) -> None:
        with self._condition:
            self._messages.append(received)
            self._condition.notify_all()

    def clear(self) -> None:
        with self._condition:
            self._messages.clear()

    def wait_for(self, count: int, timeout: float = 10) -> list[ReceivedMessage]:
        """Block until at least ``count`` messages have arrived; return them all."""
        with self._condition:
            if not self._condition.wait_for(lambda: len(self._messages) >= count, timeout=timeout):
                raise TimeoutError(
                    f"expected {count} message(s) within {timeout}s, got {len(self._messages)}"
                )
            return list(self._messages)

    def start(self) -> None:
        if self._controller is not None:
            return
        controller = Controller(
            _RecordingHandler(self),
            hostname=self.host,
            port=self.port,
            server_hostname="mercato-test-smtp",
            ready_timeout=READY_TIMEOUT,
        )
        controller.start()
        self._controller = controller

    def stop(self) -> None:
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()


@pytest.fixture(scope="session")
def smtp_server() -> Iterator[SmtpServer]:
    """An SMTP server on 127.0.0.1 recording every message it receives."""
    server = SmtpServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


# ---------------------------------------------------------------------- HTTPS receiver
@dataclass
class ReceivedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class HttpsReceiver:
    """An HTTP(S) server on 127.0.0.1 keeping every request; it answers each with the next
    scripted ``(status, json body)`` (then ``default``)."""

    def __init__(self, ca: trustme.CA | None, workdir: Path) -> None:
        self._requests: list[ReceivedRequest] = []
        self._script: list[tuple[int, Any]] = []
        self.default: tuple[int, Any] = (200, {"ok": True})
        self._condition = threading.Condition()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                status, payload = receiver._record(
                    ReceivedRequest(self.command, self.path, dict(self.headers.items()), body)
                )
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.ca_bundle: str | None = None
        scheme = "http"
        if ca is not None:
            scheme = "https"
            certificate = ca.issue_cert(LOOPBACK, "localhost")
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            certificate.configure_cert(context)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            bundle = workdir / "receiver-ca.pem"
            ca.cert_pem.write_to_path(str(bundle))
            self.ca_bundle = str(bundle)
        self.url = f"{scheme}://{LOOPBACK}:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def _record(self, request: ReceivedRequest) -> tuple[int, Any]:
        with self._condition:
            self._requests.append(request)
            self._condition.notify_all()
            return self._script.pop(0) if self._script else self.default

    @property
    def requests(self) -> list[ReceivedRequest]:
        with self._condition:
            return list(self._requests)

    def answer(self, *responses: int | tuple[int, Any]) -> None:
        """Script the next answers: a status, or (status, JSON body)."""
        with self._condition:
            self._script = [r if isinstance(r, tuple) else (r, {"status": r}) for r in responses]

    def reset(self) -> None:
        with self._condition:
            self._requests.clear()
            self._script.clear()
            self.default = (200, {"ok": True})

    def wait_for(self, count: int, timeout: float = 10) -> list[ReceivedRequest]:
        with self._condition:
            if not self._condition.wait_for(lambda: len(self._requests) >= count, timeout=timeout):
                raise TimeoutError(
                    f"expected {count} request(s) within {timeout}s, got {len(self._requests)}"
                )
            return list(self._requests)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="session")
def https_receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpsReceiver]:
    """An HTTPS server on 127.0.0.1 trusted through ``https_receiver.ca_bundle``."""
    receiver = HttpsReceiver(trustme.CA(), tmp_path_factory.mktemp("https"))
    try:
        yield receiver
    finally:
        receiver.close()


@pytest.fixture
def receiver(https_receiver: HttpsReceiver) -> HttpsReceiver:
    """The HTTPS receiver, emptied for this test."""
    https_receiver.reset()
    return https_receiver


# ---------------------------------------------------------------------- TCP proxy
class TcpProxy:
    """A loopback TCP proxy in front of a server (RabbitMQ, say), for fault tests:
    ``cut()`` drops every connection through it and refuses new ones until ``restore()``,
    as a network partition or a broker restart would."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server((LOOPBACK, 0))
        self.port: int = self._listener.getsockname()[1]
        self._up = threading.Event()
        self._up.set()
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self.cuts = 0
        self.refused = 0
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            if not self._up.is_set():
                self.refused += 1
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Drop every connection and refuse new ones."""
        self._up.clear()
        self.cuts += 1
        with self._lock:
            dropped, self._open = self._open, []
        for sock in dropped:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def restore(self) -> None:
        self._up.set()

    def close(self) -> None:
        self.cut()
        self._listener.close()
