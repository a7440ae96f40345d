"""cassetto's storage backends: the same behaviour from a local folder and from S3 (moto on loopback)."""

from __future__ import annotations

import io
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from PIL import Image

from cassetto.images import IMMUTABLE_CACHE_CONTROL, process_image, store_image
from cassetto.storage import (
    FileStorage,
    InvalidKey,
    NotFound,
    S3Storage,
    Storage,
    StorageError,
    storage_from_url,
)
from tests.servers import LOOPBACK, MotoServer

BACKENDS = ["file", "s3", "s3-prefixed"]


@pytest.fixture(scope="session")
def s3_client(moto_server: MotoServer) -> Any:
    """One boto3 client for the session, built the way S3Storage builds its own.

    Building a client takes longer than most tests here, so the tests share it.
    """
    return S3Storage(
        "unused",
        endpoint_url=moto_server.endpoint_url,
        region=moto_server.region,
        aws_access_key_id=moto_server.access_key_id,
        aws_secret_access_key=moto_server.secret_access_key,
    ).client


def _s3_storage(client: Any, prefix: str = "") -> S3Storage:
    """An S3Storage on a new bucket of its own."""
    storage = S3Storage(f"cassetto-{secrets.token_hex(6)}", prefix=prefix, client=client)
    storage.ensure_bucket()
    return storage


@pytest.fixture(params=BACKENDS)
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    """A fresh, empty storage of each kind: a folder, a bucket, a bucket under a prefix."""
    if request.param == "file":
        return FileStorage(tmp_path / "assets")
    client = request.getfixturevalue("s3_client")
    return _s3_storage(client, prefix="tenant-a/assets" if request.param == "s3-prefixed" else "")


def _raw_object_count(storage: Storage) -> int:
    """Objects as the backend itself sees them, not as the storage reports them."""
    if isinstance(storage, FileStorage):
        if not storage.root.exists():
            return 0
        # Sidecars live in a hidden folder and temporary files have hidden names.
        return sum(
            1
            for path in storage.root.rglob("*")
            if path.is_file()
            and not any(part.startswith(".") for part in path.relative_to(storage.root).parts)
        )
    assert isinstance(storage, S3Storage)
    listing = storage.client.list_objects_v2(Bucket=storage.bucket)
    return int(listing["KeyCount"])


def _http() -> requests.Session:
    # No proxy from the environment may reroute a request meant for loopback.
    session = requests.Session()
    session.trust_env = False
    return session


def _png(colour: tuple[int, int, int, int] = (20, 40, 160, 255), size: tuple[int, int] = (640, 400)) -> bytes:
    image = Image.new("RGBA", size, (0, 0, 0, 0))
    image.paste(colour, (size[0] // 4, size[1] // 4, size[0] * 3 // 4, size[1] * 3 // 4))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------------- both backends
def test_put_get_exists_size_content_type_delete(storage: Storage) -> None:
    body = secrets.token_bytes(150_000)
    key = "products/42/logo.bin"
    assert not storage.exists(key)

    storage.put(key, body, "image/png", cache_control="public, max-age=60")

    assert storage.exists(key)
    assert storage.get(key) == body
    assert storage.size(key) == len(body)
    # What was put, whatever the extension suggests.
    assert storage.content_type(key) == "image/png"
    info = storage.info(key)
    assert (info.size, info.content_type, info.cache_control) == (
        len(body),
        "image/png",
        "public, max-age=60",
    )
    assert b"".join(storage.open_stream(key)) == body
    assert list(storage.list_keys()) == [key]
    assert list(storage.list_keys("products/")) == [key]
    assert list(storage.list_keys("other/")) == []

    storage.put(key, b"replaced", "text/plain")
    assert storage.get(key) == b"replaced"
    assert storage.content_type(key) == "text/plain"
    assert storage.info(key).cache_control is None

    storage.delete(key)
    assert not storage.exists(key)
    storage.delete(key)  # deleting what is not there is not an error, as in S3
    assert list(storage.list_keys()) == []


def test_open_stream_yields_chunks(storage: Storage) -> None:
    body = secrets.token_bytes(10_000)
    storage.put("stream/me.bin", body, "application/octet-stream")
    chunks = list(storage.open_stream("stream/me.bin", chunk_size=4096))
    assert b"".join(chunks) == body
    assert len(chunks) >= 3
    assert all(len(chunk) <= 4096 for chunk in chunks)


@pytest.mark.parametrize(
    "read",
    [
        lambda storage, key: storage.get(key),
        lambda storage, key: storage.open_stream(key),
        lambda storage, key: storage.size(key),
        lambda storage, key: storage.content_type(key),
        lambda storage, key: storage.info(key),
    ],
    ids=["get", "open_stream", "size", "content_type", "info"],
)
def test_missing_keys_raise_not_found(storage: Storage, read: Callable[[Storage, str], Any]) -> None:
    storage.put("present.txt", b"here", "text/plain")
    with pytest.raises(NotFound) as raised:
        read(storage, "absent/key.png")
    assert isinstance(raised.value, StorageError)
    assert raised.value.key == "absent/key.png"
    assert "absent/key.png" in str(raised.value)
    assert not storage.exists("absent/key.png")


BAD_KEYS = [
    "../escape.txt",
    "a/../../escape.txt",
    "a/..",
    "/etc/passwd",
    "",
    "a//b",
    "trailing/",
    "back\\slash",
    ".hidden",
    "a/./b",
    "nul\x00byte",
    "x" * 1025,
]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_keys_that_escape_or_differ_between_backends_are_refused(storage: Storage, key: str) -> None:
    with pytest.raises(InvalidKey):
        storage.put(key, b"x", "text/plain")
    with pytest.raises(InvalidKey):
        storage.get(key)
    with pytest.raises(InvalidKey):
        storage.exists(key)
    assert list(storage.list_keys()) == []


def test_store_image_writes_each_blob_once(storage: Storage) -> None:
    processed = process_image(_png())
    blobs = processed.blobs()

    store_image(storage, processed)

    assert _raw_object_count(storage) == len(blobs)
    for blob in blobs:
        assert storage.get(blob.key) == blob.data
        info = storage.info(blob.key)
        assert info.content_type == blob.content_type
        assert info.cache_control == IMMUTABLE_CACHE_CONTROL

    # The same upload again: same keys, and not a single write.
    puts: list[str] = []
    real_put = storage.put

    def counting_put(key: str, data: bytes, content_type: str, cache_control: str | None = None) -> None:
        puts.append(key)
        real_put(key, data, content_type, cache_control)

    again = process_image(_png())
    assert [blob.key for blob in again.blobs()] == [blob.key for blob in blobs]
    setattr(storage, "put", counting_put)  # noqa: B010 - instance attribute shadows the method
    store_image(storage, again)
    assert puts == []
    assert _raw_object_count(storage) == len(blobs)

    # A different image adds its own objects next to the first ones.
    store_image(storage, process_image(_png(colour=(200, 30, 30, 255))))
    assert puts
    assert _raw_object_count(storage) > len(blobs)


# ---------------------------------------------------------------------- local folder
def test_file_storage_keeps_files_under_its_root(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path / "assets")
    storage.put("sha256/ab/cd/file.webp", b"RIFF....", "image/webp")

    assert (tmp_path / "assets" / "sha256" / "ab" / "cd" / "file.webp").read_bytes() == b"RIFF...."
    assert sorted(path.name for path in tmp_path.iterdir()) == ["assets"]
    # Readable by a web server running as another user; no temporary file left behind.
    mode = stat.S_IMODE((tmp_path / "assets/sha256/ab/cd/file.webp").stat().st_mode)
    assert mode == 0o644
    assert not list((tmp_path / "assets").rglob(".tmp-*"))
    # Metadata survives a new instance, as it would a restart.
    assert FileStorage(tmp_path / "assets").content_type("sha256/ab/cd/file.webp") == "image/webp"
    assert storage.url("sha256/ab/cd/file.webp") is None


def test_file_storage_refuses_a_symlink_out_of_its_root(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "assets"
    root.mkdir()
    os.symlink(outside, root / "link")
    storage = FileStorage(root)

    with pytest.raises(InvalidKey, match="outside"):
        storage.put("link/planted.txt", b"x", "text/plain")
    assert list(outside.iterdir()) == []


def test_file_storage_without_sidecar_guesses_from_the_name(tmp_path: Path) -> None:
    (tmp_path / "copied").mkdir()
    (tmp_path / "copied" / "by-hand.png").write_bytes(b"png")
    storage = FileStorage(tmp_path)
    assert storage.content_type("copied/by-hand.png") == "image/png"
    assert list(storage.list_keys()) == ["copied/by-hand.png"]


def test_file_storage_reports_write_failures(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    storage.put("taken", b"a file", "text/plain")
    # "taken" is a file, so nothing can be stored beneath it.
    with pytest.raises(StorageError, match="could not write 'taken/below'"):
        storage.put("taken/below", b"x", "text/plain")
    with pytest.raises(NotFound):
        storage.get("taken/below")


# ---------------------------------------------------------------------- S3
def test_s3_presigned_url_serves_the_object(s3_client: Any) -> None:
    storage = _s3_storage(s3_client)
    processed = process_image(_png())
    store_image(storage, processed)
    blob = processed.renditions["card"]

    url = storage.url(blob.key, expires_in=300)

    assert url is not None
    parts = urlsplit(url)
    assert parts.hostname == LOOPBACK
    assert "X-Amz-Signature=" in parts.query and "X-Amz-Expires=300" in parts.query
    response = _http().get(url, timeout=10)
    assert response.status_code == 200
    assert response.content == blob.data
    assert response.headers["Content-Type"] == "image/webp"
    assert response.headers["Cache-Control"] == IMMUTABLE_CACHE_CONTROL


def test_s3_prefix_is_part_of_the_stored_key(moto_server: MotoServer, s3_client: Any) -> None:
    storage = _s3_storage(s3_client, prefix="/mercato/assets/")
    storage.put("a/b.txt", b"hello", "text/plain")

    listing = moto_server.boto3_client("s3").list_objects_v2(Bucket=storage.bucket)
    assert [item["Key"] for item in listing["Contents"]] == ["mercato/assets/a/b.txt"]
    assert list(storage.list_keys()) == ["a/b.txt"]
    # Another prefix in the same bucket sees nothing of it.
    other = S3Storage(storage.bucket, prefix="elsewhere", client=storage.client)
    assert not other.exists("a/b.txt")
    assert list(other.list_keys()) == []


def test_s3_errors_other_than_a_missing_key_are_storage_errors(moto_server: MotoServer) -> None:
    storage = S3Storage(
        f"never-created-{secrets.token_hex(4)}",
        endpoint_url=moto_server.endpoint_url,
        region=moto_server.region,
        aws_access_key_id=moto_server.access_key_id,
        aws_secret_access_key=moto_server.secret_access_key,
    )
    with pytest.raises(StorageError, match="NoSuchBucket") as raised:
        storage.put("a.txt", b"x", "text/plain")
    assert not isinstance(raised.value, NotFound)
    assert storage.bucket in str(raised.value)


def test_ensure_bucket_is_idempotent(moto_server: MotoServer, s3_client: Any) -> None:
    storage = _s3_storage(s3_client)
    storage.ensure_bucket()
    buckets = {bucket["Name"] for bucket in moto_server.boto3_client("s3").list_buckets()["Buckets"]}
    assert storage.bucket in buckets


# ---------------------------------------------------------------------- from a URL
def test_storage_from_a_file_url(tmp_path: Path) -> None:
    storage = storage_from_url((tmp_path / "my assets").as_uri(), aws_access_key_id="ignored")
    assert isinstance(storage, FileStorage)
    assert storage.root == (tmp_path / "my assets").resolve()
    storage.put("x.txt", b"x", "text/plain")
    assert (tmp_path / "my assets" / "x.txt").read_bytes() == b"x"


def test_storage_from_an_s3_url(moto_server: MotoServer) -> None:
    bucket = f"from-url-{secrets.token_hex(4)}"
    storage = storage_from_url(
        f"s3://{bucket}?endpoint_url={moto_server.endpoint_url}&region=eu-west-1&prefix=assets",
        aws_access_key_id=moto_server.access_key_id,
        aws_secret_access_key=moto_server.secret_access_key,
    )
    assert isinstance(storage, S3Storage)
    assert (storage.bucket, storage.prefix, storage.endpoint_url, storage.region) == (
        bucket,
        "assets",
        moto_server.endpoint_url,
        "eu-west-1",
    )
    assert storage.client.meta.region_name == "eu-west-1"

    storage.ensure_bucket()
    storage.put("k.txt", b"through the URL", "text/plain")
    raw = moto_server.boto3_client("s3").get_object(Bucket=bucket, Key="assets/k.txt")
    assert raw["Body"].read() == b"through the URL"
    location = moto_server.boto3_client("s3").get_bucket_location(Bucket=bucket)
    assert location["LocationConstraint"] == "eu-west-1"


def test_the_path_of_an_s3_url_is_the_prefix() -> None:
    storage = storage_from_url("s3://assets-bucket/tenant-a/logos", region_name="us-east-1")
    assert isinstance(storage, S3Storage)
    assert (storage.bucket, storage.prefix) == ("assets-bucket", "tenant-a/logos")


def test_storage_from_a_minimal_s3_url() -> None:
    storage = storage_from_url("s3://just-a-bucket", region_name="us-east-1")
    assert isinstance(storage, S3Storage)
    assert (storage.bucket, storage.prefix, storage.endpoint_url, storage.region) == (
        "just-a-bucket",
        "",
        None,
        None,
    )


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("file:relative/folder", "three slashes"),
        ("file://host/folder", "three slashes"),
        ("file:///srv/assets?x=1", "no options"),
        ("s3://", "s3://bucket"),
        ("s3://bucket?endpoint=http://127.0.0.1:9000", "unknown option(s) endpoint"),
        ("s3://bucket?region=a&region=b", "given twice: region"),
        ("ftp://host/folder", "unsupported scheme 'ftp'"),
        ("", "unsupported scheme ''"),
    ],
)
def test_storage_urls_that_are_refused(url: str, message: str) -> None:
    with pytest.raises(StorageError) as raised:
        storage_from_url(url)
    assert message in str(raised.value)
