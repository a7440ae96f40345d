"""Checking a file someone attaches (to a support ticket, say) before it is stored.

A file is accepted when its content is one of the kinds people exchange with support
(images, PDF, plain text and logs, ZIP archives without programs inside) and it is not
too large. The kind is judged from the bytes, never from the name or the type the sender
claimed; a name with a program's or a web page's extension is refused whatever its
content, since a browser or a mail client would act on the name. The content type an
accepted file is served with is the judged one (text as ``text/plain``), always as a
download with ``nosniff``, so markup inside a log file stays text.
"""

from __future__ import annotations

import io
import unicodedata
import zipfile
from dataclasses import dataclass, field

#: extensions of files a computer runs or a browser renders with scripts
DANGEROUS_EXTENSIONS = frozenset(
    {
        "apk", "app", "bat", "bin", "cmd", "com", "cpl", "dll", "dmg", "exe", "gadget", "hta", "htm",
        "html", "iso", "jar", "js", "jse", "lnk", "mht", "mhtml", "msi", "msp", "pif", "ps1", "psm1",
        "reg", "scf", "scr", "sh", "shtml", "svg", "svgz", "vb", "vbe", "vbs", "ws", "wsf", "wsh",
        "xht", "xhtml", "xml", "xsl",
    }
)  # fmt: skip
#: what is accepted, for the messages
ACCEPTED = "images (PNG, JPEG, GIF, WebP), PDF, text and log files, and ZIP archives"
_PROGRAM_MAGIC = (
    (b"MZ", "a Windows program"),
    (b"\x7fELF", "a Linux program"),
    (b"\xcf\xfa\xed\xfe", "a macOS program"),
    (b"\xce\xfa\xed\xfe", "a macOS program"),
    (b"\xca\xfe\xba\xbe", "a macOS or Java program"),
    (b"#!", "a script"),
)


class RefusedFile(ValueError):
    """The file is not accepted; ``reason`` says why, in words for the person who sent it."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True)
class CheckedFile:
    #: a name safe to show and to offer as the download's name
    filename: str
    #: the type judged from the content
    content_type: str
    data: bytes = field(repr=False)

    @property
    def size(self) -> int:
        return len(self.data)


def safe_filename(name: str | None, fallback: str = "attachment") -> str:
    """The last path segment, without control characters or quotes, at most 150 characters."""
    name = unicodedata.normalize("NFC", (name or "").replace("\\", "/").rsplit("/", 1)[-1])
    name = "".join(c for c in name if unicodedata.category(c)[0] != "C" and c not in "\"'<>|:*?")
    name = name.strip(" .")
    if not name:
        return fallback
    if len(name) > 150:
        stem, dot, ext = name.rpartition(".")
        name = (stem[: 150 - len(ext) - 1] + dot + ext) if dot and len(ext) <= 10 else name[:150]
    return name


def _extension(name: str) -> str:
    return name.rsplit(".", 1)[-1].lower() if "." in name else ""


def _sniff(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data.startswith(b"%PDF-"):
        return "application/pdf"
    if data.startswith(b"PK\x03\x04") or data.startswith(b"PK\x05\x06"):
        return "application/zip"
    return None


def _is_text(data: bytes) -> bool:
    if b"\x00" in data:
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        try:
            data.decode("latin-1")
        except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes everything
            return False
        # Latin-1 decodes any byte string: accept it only when it is mostly printable.
        printable = sum(32 <= b < 127 or b in (9, 10, 13) or b >= 160 for b in data[:65536])
        return printable >= 0.95 * min(len(data), 65536)
    return True


def _check_zip(data: bytes) -> None:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for info in archive.infolist():
                inner = safe_filename(info.filename)
                if _extension(inner) in DANGEROUS_EXTENSIONS:
                    raise RefusedFile(f"the archive holds {inner}, a file type that is not accepted")
    except zipfile.BadZipFile:
        raise RefusedFile("the ZIP archive is damaged") from None


def check_attachment(name: str | None, data: bytes, *, max_bytes: int = 10 * 1024 * 1024) -> CheckedFile:
    """The file ready to store, or :class:`RefusedFile` with the reason."""
    filename = safe_filename(name)
    if not data:
        raise RefusedFile(f"{filename} is empty")
    if len(data) > max_bytes:
        raise RefusedFile(
            f"{filename} is {len(data) / 1_048_576:.1f} MB; an attachment may be at most "
            f"{max_bytes / 1_048_576:.0f} MB"
        )
    extension = _extension(filename)
    if extension in DANGEROUS_EXTENSIONS:
        raise RefusedFile(f"{filename}: .{extension} files are not accepted; accepted are {ACCEPTED}")
    for magic, what in _PROGRAM_MAGIC:
        if data.startswith(magic):
            raise RefusedFile(f"{filename} is {what}, which is not accepted; accepted are {ACCEPTED}")
    content_type = _sniff(data)
    if content_type == "application/zip":
        _check_zip(data)
    elif content_type is None:
        if not _is_text(data):
            raise RefusedFile(f"{filename} is of a kind that is not accepted; accepted are {ACCEPTED}")
        content_type = "text/plain"
    return CheckedFile(filename=filename, content_type=content_type, data=data)
