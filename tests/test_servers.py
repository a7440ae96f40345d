"""The real servers from ``tests/servers.py`` work: moto (S3 and EC2), sshd and SMTP."""

from __future__ import annotations

import secrets
import smtplib
import subprocess
from email.message import EmailMessage
from pathlib import Path

import paramiko
import pytest
from libcloud.compute.base import NodeDriver
from libcloud.compute.providers import get_driver
from libcloud.compute.types import NodeState, Provider

from tests.servers import LOOPBACK, MotoServer, SmtpServer, SshdServer


# ---------------------------------------------------------------------- moto
def test_moto_server_is_on_loopback(moto_server: MotoServer) -> None:
    assert moto_server.host == LOOPBACK
    assert moto_server.endpoint_url == f"http://127.0.0.1:{moto_server.port}"


def test_s3_put_and_get_object(moto_server: MotoServer) -> None:
    s3 = moto_server.boto3_client("s3")
    bucket = f"mercato-test-{secrets.token_hex(4)}"
    body = secrets.token_bytes(2048)

    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="dir/object.bin", Body=body)

    assert s3.get_object(Bucket=bucket, Key="dir/object.bin")["Body"].read() == body
    assert bucket in {b["Name"] for b in s3.list_buckets()["Buckets"]}


def test_moto_reset_forgets_buckets(moto_server: MotoServer) -> None:
    s3 = moto_server.boto3_client("s3")
    bucket = f"mercato-reset-{secrets.token_hex(4)}"
    s3.create_bucket(Bucket=bucket)

    moto_server.reset()

    assert bucket not in {b["Name"] for b in s3.list_buckets()["Buckets"]}


def _ec2_driver(moto_server: MotoServer) -> NodeDriver:
    cls = get_driver(Provider.EC2)
    driver: NodeDriver = cls(
        moto_server.access_key_id,
        moto_server.secret_access_key,
        region="us-east-1",
        host=moto_server.host,
        port=moto_server.port,
        secure=False,
        # SigV4 puts "ec2" in the Authorization header, which is how moto routes the
        # request; with Libcloud's default SigV2 moto answers as S3.
        signature_version="4",
    )
    return driver


def test_libcloud_kwargs_helper(moto_server: MotoServer) -> None:
    cls = get_driver(Provider.EC2)
    driver = cls(
        moto_server.access_key_id, moto_server.secret_access_key, **moto_server.libcloud_ec2_kwargs()
    )
    assert driver.connection.host == "127.0.0.1"
    assert driver.connection.port == moto_server.port
    zones = {zone.name for zone in driver.ex_list_availability_zones()}
    assert "us-east-1a" in zones, "an EC2 answer, not S3 (how moto treats unroutable requests)"


def test_libcloud_ec2_against_moto(moto_server: MotoServer) -> None:
    driver = _ec2_driver(moto_server)

    sizes = {size.id for size in driver.list_sizes()}
    assert "t2.micro" in sizes

    images = driver.list_images(ex_owner="amazon")
    assert images, "moto should serve its default Amazon images"
    image = sorted(images, key=lambda i: i.id)[0]
    size = next(s for s in driver.list_sizes() if s.id == "t2.micro")

    name = f"mercato-test-{secrets.token_hex(3)}"
    node = driver.create_node(name=name, size=size, image=image)
    try:
        assert node.id.startswith("i-")
        listed = {n.id: n for n in driver.list_nodes()}
        assert node.id in listed
        assert listed[node.id].name == name
        assert listed[node.id].extra["image_id"] == image.id
        assert listed[node.id].extra["instance_type"] == "t2.micro"
    finally:
        assert driver.destroy_node(node)

    after = {n.id: n for n in driver.list_nodes()}
    assert node.id not in after or after[node.id].state == NodeState.TERMINATED


# ---------------------------------------------------------------------- sshd
def _ssh_client(sshd_server: SshdServer) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.load_host_keys(str(sshd_server.known_hosts_path))
    return client


def _connect(sshd_server: SshdServer, client: paramiko.SSHClient, key_path: Path) -> None:
    client.connect(
        sshd_server.host,
        port=sshd_server.port,
        username=sshd_server.username,
        key_filename=str(key_path),
        look_for_keys=False,
        allow_agent=False,
        timeout=10,
        banner_timeout=10,
        auth_timeout=10,
    )


def test_known_hosts_line_matches_host_key(sshd_server: SshdServer) -> None:
    public_file = sshd_server.host_key_path.with_name(sshd_server.host_key_path.name + ".pub")
    assert sshd_server.host_public_key == public_file.read_text().strip()
    assert sshd_server.host_public_key.startswith("ssh-ed25519 ")
    assert sshd_server.known_hosts_line() == f"[127.0.0.1]:{sshd_server.port} {sshd_server.host_public_key}"
    assert sshd_server.known_hosts_path.read_text() == sshd_server.known_hosts_line() + "\n"


def test_ssh_runs_a_command_with_the_client_key(sshd_server: SshdServer) -> None:
    token = secrets.token_hex(8)
    client = _ssh_client(sshd_server)
    try:
        _connect(sshd_server, client, sshd_server.client_key_path)
        server_key = client.get_transport().get_remote_server_key()
        assert server_key.get_base64() == sshd_server.host_public_key.split()[1]
        _stdin, stdout, stderr = client.exec_command(f"echo hello-{token}", timeout=10)
        assert stdout.read().decode().strip() == f"hello-{token}"
        assert stdout.channel.recv_exit_status() == 0
        assert stderr.read() == b""
    finally:
        client.close()


def test_ssh_rejects_an_unauthorized_key(sshd_server: SshdServer, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)],
        check=True,
        capture_output=True,
    )
    client = _ssh_client(sshd_server)
    try:
        with pytest.raises(paramiko.AuthenticationException):
            _connect(sshd_server, client, stranger)
    finally:
        client.close()


def test_ssh_rejects_an_unknown_host_key(sshd_server: SshdServer) -> None:
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
            _connect(sshd_server, client, sshd_server.client_key_path)
    finally:
        client.close()


def test_authorize_key_lets_a_new_key_in(sshd_server: SshdServer, tmp_path: Path) -> None:
    customer = tmp_path / "customer"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "customer", "-f", str(customer)],
        check=True,
        capture_output=True,
    )
    sshd_server.authorize_key(customer.with_name("customer.pub").read_text())
    client = _ssh_client(sshd_server)
    try:
        _connect(sshd_server, client, customer)
        _stdin, stdout, _stderr = client.exec_command("echo customer-in", timeout=10)
        assert stdout.read().decode().strip() == "customer-in"
    finally:
        client.close()


# ---------------------------------------------------------------------- SMTP
def _message(subject: str, to: list[str], body: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "noreply@mercato.test"
    message["To"] = ", ".join(to)
    message["Subject"] = subject
    message.set_content(body)
    return message


def _send(smtp_server: SmtpServer, message: EmailMessage) -> None:
    with smtplib.SMTP(smtp_server.host, smtp_server.port, local_hostname="localhost", timeout=5) as smtp:
        smtp.send_message(message)


def test_smtp_receives_a_message(smtp_server: SmtpServer) -> None:
    smtp_server.clear()
    token = secrets.token_hex(6)
    recipients = ["alice@example.test", "bob@example.test"]

    _send(smtp_server, _message(f"Invoice {token}", recipients, f"Hello, your code is {token}.\n"))

    [received] = smtp_server.wait_for(1)
    assert received.mail_from == "noreply@mercato.test"
    assert sorted(received.rcpt_tos) == recipients
    assert received.message["Subject"] == f"Invoice {token}"
    assert received.message.get_content().strip() == f"Hello, your code is {token}."
    assert smtp_server.messages == [received]


def test_smtp_wait_for_times_out(smtp_server: SmtpServer) -> None:
    smtp_server.clear()
    with pytest.raises(TimeoutError):
        smtp_server.wait_for(1, timeout=0.2)


def test_smtp_stop_and_start_on_the_same_port(smtp_server: SmtpServer) -> None:
    smtp_server.clear()
    port = smtp_server.port
    smtp_server.stop()
    try:
        assert not smtp_server.running
        with pytest.raises(
            (ConnectionRefusedError, smtplib.SMTPConnectError, smtplib.SMTPServerDisconnected)
        ):
            _send(smtp_server, _message("while down", ["down@example.test"], "lost\n"))
    finally:
        smtp_server.start()

    assert smtp_server.running
    assert smtp_server.port == port
    _send(smtp_server, _message("back up", ["up@example.test"], "delivered\n"))
    [received] = smtp_server.wait_for(1)
    assert received.message["Subject"] == "back up"
    assert received.rcpt_tos == ["up@example.test"]
