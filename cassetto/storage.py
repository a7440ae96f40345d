"""Where stored files live: one interface, a local-folder backend and an S3 backend.

:class:`Storage` is what the rest of the platform talks to. :class:`FileStorage` keeps
objects in a folder (the embedded default under ``var/``); :class:`S3Storage` keeps them
in a bucket of any S3-compatible service (AWS, MinIO, Ceph; moto in the tests).
:func:`storage_from_url` picks one from the ``storage_url`` setting.

Keys are ``/``-separated relative paths such as ``sha256/ab/cd/abcd....png``. Both
backends accept exactly the same keys, so code tested against one works on the other;
see :func:`check_key`. This module knows nothing about the database: a row per stored
file is the application's business.
"""

from __future__ import annotations

import abc
import contextlib
import json
import mimetypes
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = [
    "DEFAULT_CONTENT_TYPE",
    "FileStorage",
    "InvalidKey",
    "NotFound",
    "ObjectInfo",
    "S3Storage",
    "Storage",
    "StorageError",
    "check_key",
    "storage_from_url",
]

#: what a stored object is served as when nobody said otherwise
DEFAULT_CONTENT_TYPE = "application/octet-stream"
#: bytes per chunk yielded by :meth:`Storage.open_stream`
CHUNK_SIZE = 64 * 1024
#: S3's own limit on a key, in UTF-8 bytes; applied to both backends alike
MAX_KEY_BYTES = 1024
S3_OPTIONS = frozenset({"endpoint_url", "region", "prefix"})


class StorageError(Exception):
    """A storage operation failed; the message says which operation, on which key, and why."""


class NotFound(StorageError):
    """No object is stored under the key."""

    def __init__(self, key: str, where: str = "") -> None:
        self.key = key
        super().__init__(f"no object stored under {key!r}" + (f" in {where}" if where else ""))


class InvalidKey(StorageError, ValueError):
    """The key is not a relative ``/``-separated path this library accepts."""


@dataclass(frozen=True)
class ObjectInfo:
    """What is known about a stored object without reading it."""

    #: length in bytes
    size: int
    #: MIME type given to :meth:`Storage.put`
    content_type: str
    #: ``Cache-Control`` value given to :meth:`Storage.put`, if any
    cache_control: str | None = None


def check_key(key: str) -> str:
    """Return ``key`` if both backends can store it, else raise :class:`InvalidKey`.

    A key is a relative path of non-empty segments separated by ``/``. A segment may not
    start with ``.``: that refuses ``.`` and ``..`` (escaping the folder of a
    :class:`FileStorage`) and keeps names starting with a dot free for the file
    backend's temporary files and metadata. The same rule holds for S3, where such keys
    would be legal, so that a key never works on one backend and fails on the other.
    """
    if not isinstance(key, str) or not key:
        raise InvalidKey(f"invalid key {key!r}: a key is a non-empty string")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise InvalidKey(f"invalid key {key[:40]!r}...: longer than {MAX_KEY_BYTES} bytes")
    if key.startswith("/") or "\\" in key:
        raise InvalidKey(f"invalid key {key!r}: use a relative path with / separators")
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in key):
        raise InvalidKey(f"invalid key {key!r}: control characters are not allowed")
    for segment in key.split("/"):
        if not segment:
            raise InvalidKey(f"invalid key {key!r}: empty path segment")
        if segment.startswith("."):
            raise InvalidKey(f"invalid key {key!r}: a path segment may not start with '.'")
    return key


class Storage(abc.ABC):
    """A place to put, read and delete objects (bytes with a content type) by key.

    Every method raises :class:`StorageError` when the backend fails,
    :class:`NotFound` when it reads a key that holds nothing, and :class:`InvalidKey`
    for a key :func:`check_key` refuses. :meth:`put` replaces an existing object;
    :meth:`delete` of a missing key does nothing, as S3 does.
    """

    @abc.abstractmethod
    def put(self, key: str, data: bytes, content_type: str, cache_control: str | None = None) -> None:
        """Store ``data`` under ``key``; readers see the old object or the new one, never half."""

    @abc.abstractmethod
    def get(self, key: str) -> bytes:
        """The whole object."""

    @abc.abstractmethod
    def open_stream(self, key: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        """The object in chunks, for streaming responses.

        :class:`NotFound` is raised by this call, not by the first ``next()``, so a web
        route can answer 404 before it starts its response.
        """

    @abc.abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; nothing happens if there is none."""

    @abc.abstractmethod
    def info(self, key: str) -> ObjectInfo:
        """Size, content type and cache control of the object."""

    @abc.abstractmethod
    def list_keys(self, prefix: str = "") -> Iterator[str]:
        """Every key starting with ``prefix``, for audits and orphan reaping; order unspecified."""

    @abc.abstractmethod
    def url(self, key: str, expires_in: int = 3600) -> str | None:
        """A URL a browser can fetch the object from directly, valid ``expires_in`` seconds.

        ``None`` when the backend has no such URL and the application must serve the
        object itself (see :meth:`open_stream`).
        """

    def size(self, key: str) -> int:
        """Length of the object in bytes."""
        return self.info(key).size

    def content_type(self, key: str) -> str:
        """The content type given to :meth:`put`."""
        return self.info(key).content_type


# ---------------------------------------------------------------------- local folder
_META_DIR = ".cassetto-meta"


class FileStorage(Storage):
    """Objects as files under ``root``; content type and cache control in a sidecar.

    The object for key ``a/b.png`` is the file ``root/a/b.png``, so the folder can be
    browsed, backed up or served as it is. Its metadata is JSON in
    ``root/.cassetto-meta/a/b.png.json``: a file's name cannot carry the content type
    that was put (``content_type`` must return exactly that, whatever the extension), and
    a separate tree keeps sidecar names from ever colliding with keys, which cannot
    start with a dot.

    Each file is replaced atomically, but the object and its sidecar are two files: two
    concurrent puts of one key with different content types may pair one's bytes with
    the other's type. Content-addressed keys never differ in content type.
    """

    def __init__(self, root: Path | str) -> None:
        # Resolved once so that the containment check below compares real paths.
        self.root = Path(root).expanduser().resolve()

    def __repr__(self) -> str:
        return f"FileStorage({str(self.root)!r})"

    # -------------------------------------------------------------- paths
    def _path(self, key: str) -> Path:
        path = self.root.joinpath(*check_key(key).split("/"))
        # check_key already refuses '..'; this also catches a symlink inside the root
        # pointing elsewhere, which would otherwise let a write land outside it.
        resolved = path.parent.resolve() / path.name
        if not resolved.is_relative_to(self.root):
            raise InvalidKey(f"invalid key {key!r}: it leads outside {self.root}")
        return path

    def _meta_path(self, key: str) -> Path:
        return self.root.joinpath(_META_DIR, *key.split("/")).with_name(key.rsplit("/", 1)[-1] + ".json")

    def _read_meta(self, key: str) -> dict[str, Any]:
        try:
            loaded = json.loads(self._meta_path(key).read_bytes())
        except (OSError, ValueError):
            # Files copied in by hand have no sidecar: fall back to what the name suggests.
            loaded = None
        if not isinstance(loaded, dict):
            guessed, _ = mimetypes.guess_type(key)
            return {"content_type": guessed or DEFAULT_CONTENT_TYPE}
        return loaded

    # ------------------------------------------------------------ writing
    def put(self, key: str, data: bytes, content_type: str, cache_control: str | None = None) -> None:
        path = self._path(key)
        meta = json.dumps({"content_type": content_type, "cache_control": cache_control}).encode()
        try:
            # Metadata first: exists() looks at the object file, so once a reader can
            # see the object its content type is already there.
            _write_atomically(self._meta_path(key), meta)
            _write_atomically(path, data)
        except OSError as exc:
            raise StorageError(f"could not write {key!r} under {self.root}: {exc}") from exc

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink(missing_ok=True)
            self._meta_path(key).unlink(missing_ok=True)
        except (IsADirectoryError, NotADirectoryError):
            return  # a folder, or a path through a file: nothing is stored under this key
        except OSError as exc:
            raise StorageError(f"could not delete {key!r} under {self.root}: {exc}") from exc

    # ------------------------------------------------------------ reading
    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFound(key, str(self.root)) from None
        except OSError as exc:
            raise StorageError(f"could not read {key!r} under {self.root}: {exc}") from exc

    def open_stream(self, key: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        path = self._path(key)
        try:
            handle = path.open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFound(key, str(self.root)) from None
        except OSError as exc:
            raise StorageError(f"could not open {key!r} under {self.root}: {exc}") from exc
        return _chunks(handle, chunk_size)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def info(self, key: str) -> ObjectInfo:
        path = self._path(key)
        try:
            size = path.stat().st_size
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(key, str(self.root)) from None
        except OSError as exc:
            raise StorageError(f"could not stat {key!r} under {self.root}: {exc}") from exc
        if not path.is_file():
            raise NotFound(key, str(self.root))
        meta = self._read_meta(key)
        return ObjectInfo(
            size=size,
            content_type=str(meta.get("content_type") or DEFAULT_CONTENT_TYPE),
            cache_control=meta.get("cache_control"),
        )

    def size(self, key: str) -> int:
        # Skips the sidecar: a stat is all a size needs.
        path = self._path(key)
        try:
            if path.is_file():
                return path.stat().st_size
        except OSError as exc:
            raise StorageError(f"could not stat {key!r} under {self.root}: {exc}") from exc
        raise NotFound(key, str(self.root))

    def list_keys(self, prefix: str = "") -> Iterator[str]:
        if not self.root.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(self.root):
            # Metadata, temporary files and anything else hidden is never a key.
            dirnames[:] = sorted(name for name in dirnames if not name.startswith("."))
            relative = Path(dirpath).relative_to(self.root).as_posix()
            for name in sorted(filenames):
                if name.startswith("."):
                    continue
                key = name if relative == "." else f"{relative}/{name}"
                if key.startswith(prefix):
                    yield key

    def url(self, key: str, expires_in: int = 3600) -> str | None:
        # No web server fronts the folder; the application streams it (open_stream).
        check_key(key)
        return None


def _write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # The temporary file sits in the target folder so os.replace is a same-filesystem
    # rename, which is atomic; its dot-name can never be a key.
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            # Without fsync a crash right after the rename can leave an empty file.
            os.fsync(handle.fileno())
        # mkstemp creates 0600; objects are public assets other processes may serve.
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _chunks(handle: Any, chunk_size: int) -> Iterator[bytes]:
    with handle:
        while chunk := handle.read(chunk_size):
            yield chunk


# ---------------------------------------------------------------------- S3
class S3Storage(Storage):
    """Objects in an S3 bucket, optionally under a key prefix.

    Pass ``client`` to reuse a boto3 S3 client; otherwise one is built from
    ``endpoint_url``, ``region`` and ``client_kwargs`` (credentials, ``config``...), or
    from boto3's usual environment and files for whatever those leave out. Clients are
    thread-safe, so one storage can serve every request of a process.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        client: Any = None,
        **client_kwargs: Any,
    ) -> None:
        if not bucket:
            raise StorageError("S3Storage needs a bucket name")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        if self.prefix:
            check_key(self.prefix)
        self.endpoint_url = endpoint_url
        self.region = region
        self.client = client if client is not None else _s3_client(endpoint_url, region, client_kwargs)

    def __repr__(self) -> str:
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"S3Storage(s3://{self.bucket}/{self.prefix}{where})"

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _where(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def _fail(self, operation: str, key: str | None, exc: Exception) -> StorageError:
        target = self._where(key) if key is not None else f"s3://{self.bucket}"
        if _is_not_found(exc) and key is not None:
            return NotFound(key, f"s3://{self.bucket}/{self.prefix}")
        return StorageError(f"S3 {operation} {target} failed: {_describe(exc)}")

    # ------------------------------------------------------------ bucket
    def ensure_bucket(self) -> None:
        """Create the bucket unless it exists (development and tests; production buckets are provisioned)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if not _is_not_found(exc):
                raise self._fail("head_bucket", None, exc) from exc
        except BotoCoreError as exc:
            raise self._fail("head_bucket", None, exc) from exc
        options: dict[str, Any] = {"Bucket": self.bucket}
        region = self.region or self.client.meta.region_name
        # us-east-1 is the one region that refuses an explicit LocationConstraint.
        if region and region != "us-east-1":
            options["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self.client.create_bucket(**options)
        except ClientError as exc:
            if _error_code(exc) in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                return  # created by a concurrent caller in between
            raise self._fail("create_bucket", None, exc) from exc
        except BotoCoreError as exc:
            raise self._fail("create_bucket", None, exc) from exc

    # ------------------------------------------------------------ objects
    def put(self, key: str, data: bytes, content_type: str, cache_control: str | None = None) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        options: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": self._key(key),
            "Body": data,
            "ContentType": content_type,
        }
        if cache_control is not None:
            options["CacheControl"] = cache_control
        try:
            self.client.put_object(**options)
        except (BotoCoreError, ClientError) as exc:
            raise self._fail("put_object", key, exc) from exc

    def get(self, key: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            with contextlib.closing(response["Body"]) as body:
                data: bytes = body.read()
                return data
        except (BotoCoreError, ClientError) as exc:
            raise self._fail("get_object", key, exc) from exc

    def open_stream(self, key: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except (BotoCoreError, ClientError) as exc:
            raise self._fail("get_object", key, exc) from exc
        return self._stream_body(key, response["Body"], chunk_size)

    def _stream_body(self, key: str, body: Any, chunk_size: int) -> Iterator[bytes]:
        from botocore.exceptions import BotoCoreError

        with contextlib.closing(body):
            try:
                yield from body.iter_chunks(chunk_size)
            except BotoCoreError as exc:
                raise self._fail("read", key, exc) from exc

    def exists(self, key: str) -> bool:
        try:
            self.info(key)
        except NotFound:
            return False
        return True

    def delete(self, key: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except (BotoCoreError, ClientError) as exc:
            raise self._fail("delete_object", key, exc) from exc

    def info(self, key: str) -> ObjectInfo:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except (BotoCoreError, ClientError) as exc:
            raise self._fail("head_object", key, exc) from exc
        return ObjectInfo(
            size=int(head["ContentLength"]),
            content_type=head.get("ContentType") or DEFAULT_CONTENT_TYPE,
            cache_control=head.get("CacheControl"),
        )

    def list_keys(self, prefix: str = "") -> Iterator[str]:
        from botocore.exceptions import BotoCoreError, ClientError

        strip = len(self.prefix) + 1 if self.prefix else 0
        full_prefix = f"{self.prefix}/{prefix}" if self.prefix else prefix
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full_prefix
            )
            for page in pages:
                for item in page.get("Contents", ()):
                    yield item["Key"][strip:]
        except (BotoCoreError, ClientError) as exc:
            raise self._fail("list_objects_v2", None, exc) from exc

    def url(self, key: str, expires_in: int = 3600) -> str | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            url: str = self.client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": self._key(key)},
                ExpiresIn=expires_in,
            )
        except (BotoCoreError, ClientError) as exc:
            raise self._fail("presign get_object", key, exc) from exc
        return url


def _s3_client(endpoint_url: str | None, region: str | None, client_kwargs: dict[str, Any]) -> Any:
    # Imported here so that the file backend works without boto3 installed.
    import boto3
    from botocore.config import Config

    options = dict(client_kwargs)
    if "config" not in options:
        # SigV4 everywhere: presigned SigV2 URLs are refused by newer regions and MinIO.
        # Path-style addressing for custom endpoints: MinIO, Ceph and moto on 127.0.0.1
        # have no wildcard DNS for bucket.host names.
        s3_options = {"addressing_style": "path"} if endpoint_url else {}
        options["config"] = Config(signature_version="s3v4", s3=s3_options)
    if endpoint_url:
        options["endpoint_url"] = endpoint_url
    if region:
        options["region_name"] = region
    # A session per client: boto3's default session is shared and not thread-safe.
    return boto3.session.Session().client("s3", **options)


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def _is_not_found(exc: Exception) -> bool:
    # head_* calls have no body, so their 404 comes back as the bare code "404".
    return _error_code(exc) in ("404", "NoSuchKey", "NotFound")


def _describe(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and "Error" in response:
        error = response["Error"]
        return f"{error.get('Code', '?')}: {error.get('Message', '') or exc}"
    return str(exc) or type(exc).__name__


# ---------------------------------------------------------------------- from a URL
def storage_from_url(url: str, **client_kwargs: Any) -> Storage:
    """The storage a ``storage_url`` setting names.

    * ``file:///absolute/folder`` -- a :class:`FileStorage` there;
    * ``s3://bucket/prefix?endpoint_url=...&region=...`` -- an :class:`S3Storage`
      (every option is optional; the bucket is the host part).

    ``client_kwargs`` go to boto3's ``client()`` (``aws_access_key_id``,
    ``aws_secret_access_key``, ``config``...) and are ignored for ``file://``, so the
    caller can pass the same ones whichever backend is configured.
    """
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise StorageError(f"storage URL {url!r}: use file:///absolute/folder (three slashes)")
        if parts.query or parts.fragment:
            raise StorageError(f"storage URL {url!r}: file:// URLs take no options")
        return FileStorage(Path(unquote(parts.path)))
    if parts.scheme == "s3":
        if not parts.netloc:
            raise StorageError(f"storage URL {url!r}: use s3://bucket/prefix?endpoint_url=...&region=...")
        options = parse_qs(parts.query, keep_blank_values=True, strict_parsing=False)
        unknown = set(options) - S3_OPTIONS
        if unknown:
            raise StorageError(
                f"storage URL {url!r}: unknown option(s) {', '.join(sorted(unknown))}; "
                f"allowed: {', '.join(sorted(S3_OPTIONS))}"
            )
        repeated = sorted(name for name, values in options.items() if len(values) > 1)
        if repeated:
            raise StorageError(f"storage URL {url!r}: option(s) given twice: {', '.join(repeated)}")
        single = {name: values[0] for name, values in options.items()}
        return S3Storage(
            parts.netloc,
            # s3://bucket/some/prefix and s3://bucket?prefix=some/prefix mean the same
            prefix=single.get("prefix") or unquote(parts.path.strip("/")),
            endpoint_url=single.get("endpoint_url") or None,
            region=single.get("region") or None,
            **client_kwargs,
        )
    raise StorageError(
        f"storage URL {url!r}: unsupported scheme {parts.scheme!r}; "
        "use file:///absolute/folder or s3://bucket?endpoint_url=...&region=..."
    )
