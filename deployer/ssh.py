"""SSH to a deployment's VM with the platform key (paramiko).

The VM's host key is recorded at first contact and required afterwards: a different key
later is refused, as ``ssh`` does with ``known_hosts``.
"""

from __future__ import annotations

import base64
import io
import shlex
from collections.abc import Mapping
from dataclasses import dataclass

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

#: seconds for TCP connect, banner and authentication
CONNECT_TIMEOUT = 15.0


class HostKeyMismatch(Exception):
    """The VM answered with another host key than the one recorded at first contact."""


def new_key_pair(comment: str) -> tuple[str, str]:
    """A fresh Ed25519 key pair: (private key in OpenSSH PEM, public key line)."""
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, f"{public.decode()} {comment}"


def load_private_key(pem: str) -> paramiko.PKey:
    return paramiko.Ed25519Key.from_private_key(io.StringIO(pem))


class _Record(paramiko.MissingHostKeyPolicy):
    """First contact: accept the host key and remember it."""

    def __init__(self) -> None:
        self.seen: paramiko.PKey | None = None

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        self.seen = key


@dataclass(frozen=True)
class Result:
    exit_status: int
    stdout: str
    stderr: str


class Session:
    """One SSH connection; use as a context manager."""

    def __init__(self, host: str, port: int, username: str, key: paramiko.PKey, host_key: str | None) -> None:
        self.host, self.port, self.username = host, port, username
        self._client = paramiko.SSHClient()
        self._policy = _Record()
        entry = host if port == 22 else f"[{host}]:{port}"
        if host_key:
            key_type, _, rest = host_key.partition(" ")
            blob = rest.split(" ", 1)[0]
            known = paramiko.PKey.from_type_string(key_type, base64.b64decode(blob))
            self._client.get_host_keys().add(entry, key_type, known)
            self._client.set_missing_host_key_policy(paramiko.RejectPolicy())
        else:
            self._client.set_missing_host_key_policy(self._policy)
        self._key = key
        self._expected = host_key

    def __enter__(self) -> Session:
        try:
            self._client.connect(
                self.host,
                port=self.port,
                username=self.username,
                pkey=self._key,
                look_for_keys=False,
                allow_agent=False,
                timeout=CONNECT_TIMEOUT,
                banner_timeout=CONNECT_TIMEOUT,
                auth_timeout=CONNECT_TIMEOUT,
            )
        except paramiko.BadHostKeyException as exc:
            raise HostKeyMismatch(f"the VM's SSH host key changed since first contact ({exc})") from None
        except paramiko.SSHException as exc:
            if "not found in known_hosts" in str(exc):
                raise HostKeyMismatch("the VM's SSH host key changed since first contact") from None
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self._client.close()

    @property
    def host_key(self) -> str:
        """The server's host key as ``type base64``."""
        transport = self._client.get_transport()
        assert transport is not None
        key = transport.get_remote_server_key()
        return f"{key.get_name()} {key.get_base64()}"

    def run(
        self,
        command: str,
        *,
        env: Mapping[str, str] | None = None,
        stdin: str | None = None,
        timeout: float = 600,
    ) -> Result:
        """Run ``command`` under ``sh`` with ``env`` exported first (sshd need not accept them)."""
        exports = "".join(f"export {name}={shlex.quote(value)}; " for name, value in (env or {}).items())
        _in, out, err = self._client.exec_command(exports + command, timeout=timeout)
        if stdin is not None:
            _in.write(stdin)
        _in.channel.shutdown_write()
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
        return Result(out.channel.recv_exit_status(), stdout, stderr)

    def read(self, command: str, *, timeout: float = 60) -> tuple[int, bytes]:
        """Run ``command``; its exit status and its standard output as raw bytes (log files
        need not be UTF-8)."""
        _in, out, _err = self._client.exec_command(command, timeout=timeout)
        _in.channel.shutdown_write()
        data = out.read()
        return out.channel.recv_exit_status(), data
