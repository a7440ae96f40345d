"""Uploaded images (logos, screenshots): validation, metadata stripping, web renditions.

:func:`process_image` takes the bytes of an upload and either refuses them with
:class:`InvalidImage` (a reason a person can act on) or returns a
:class:`ProcessedImage`: the original without its metadata, WebP renditions sized for
the storefront, and a background colour for showing it as a logo
(:mod:`cassetto.colour`). :func:`store_image` then puts every blob under a
content-addressed key, so the same bytes are stored once however often they are
uploaded.

What is refused and why: anything but PNG, JPEG and WebP judged by content, not name
(SVG can carry scripts and Pillow cannot draw it anyway); empty or too-large files,
before any decoding; images with too many pixels, before their pixel data is
decompressed (decompression bombs); truncated or damaged files, by decoding them
completely; animated PNG and WebP.

Metadata: EXIF (camera, GPS position, time), XMP, IPTC, comments, text chunks and
embedded previews are all dropped. EXIF orientation is applied to the pixels first, so
nothing needs it afterwards. An ICC profile is dropped too; when it describes a colour
space other than sRGB the pixels are converted to sRGB first, which is what an
untagged image on the web is taken to be.

Speed, for a 12-megapixel JPEG (``python -m bench.logo``): a JPEG that needs no pixel
change (no rotation, no colour conversion) keeps its compressed image data as it is and
loses only its metadata segments (:func:`strip_jpeg_metadata`), so it is neither
re-encoded nor degraded, and its renditions are decoded at reduced scale with JPEG draft
mode. Only a JPEG that must be rotated or converted is decoded in full and re-encoded,
with its own quantisation tables so its quality stays where it was.
"""

from __future__ import annotations

import hashlib
import io
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from PIL import Image, ImageCms, ImageFile, ImageOps, JpegImagePlugin, UnidentifiedImageError

from cassetto.colour import logo_background
from cassetto.storage import Storage

__all__ = [
    "ACCEPTED_CONTENT_TYPES",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_RENDITIONS",
    "IMMUTABLE_CACHE_CONTROL",
    "InvalidImage",
    "ProcessedImage",
    "StoredBlob",
    "process_image",
    "store_image",
    "strip_jpeg_metadata",
]

DEFAULT_MAX_BYTES = 5 * 1024 * 1024
DEFAULT_MAX_PIXELS = 40_000_000
#: rendition name -> the box (width, height) it fits inside
DEFAULT_RENDITIONS: Mapping[str, tuple[int, int]] = MappingProxyType(
    {"thumb": (160, 160), "card": (480, 360), "large": (1280, 960)}
)
#: a content-addressed object never changes, so browsers and CDNs may keep it for a year
IMMUTABLE_CACHE_CONTROL = "public, max-age=31536000, immutable"

#: Pillow's format name -> ours; MPO is a JPEG with extra pictures appended (phones
#: store depth maps and previews that way) and its first picture is a plain JPEG
_FORMATS = {"PNG": "png", "JPEG": "jpeg", "MPO": "jpeg", "WEBP": "webp"}
_PILLOW_FORMATS = ("PNG", "JPEG", "WEBP")
ACCEPTED_CONTENT_TYPES = MappingProxyType({"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"})
_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}
_USE_INSTEAD = "use PNG, JPEG or WebP"

#: WebP renditions: quality 80 looks like the original at these sizes; method 4 is
#: libwebp's default trade-off, and the slower 5 and 6 gain a few per cent at best
RENDITION_QUALITY = 80
RENDITION_METHOD = 4
#: re-encoded originals stay close to what was uploaded
ORIGINAL_QUALITY = 90
#: Pillow shrinks by whole factors (a cheap box filter) while the image stays at least
#: this many times the target, then resamples with Lanczos: fast, and the result cannot
#: be told from Lanczos all the way
REDUCING_GAP = 2.0

_MEGABYTE = 1024 * 1024
_ORIENTATION = 0x0112
_SWAPS_AXES = frozenset({5, 6, 7, 8})


class InvalidImage(ValueError):
    """The upload is refused; ``reason`` says why, in words for the person who sent it."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True)
class StoredBlob:
    """Bytes ready to store, with what a row describing them needs."""

    data: bytes = field(repr=False)
    content_type: str
    width: int
    height: int
    #: hex SHA-256 of ``data``
    sha256: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha256", hashlib.sha256(self.data).hexdigest())

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def key(self) -> str:
        """``sha256/ab/cd/abcd....ext``: identical bytes get the identical key.

        Two levels of fan-out keep any one folder (or S3 listing page) small.
        """
        extension = _EXTENSIONS.get(self.content_type, "bin")
        return f"sha256/{self.sha256[:2]}/{self.sha256[2:4]}/{self.sha256}.{extension}"


@dataclass(frozen=True)
class ProcessedImage:
    """An accepted upload: the cleaned original and its renditions."""

    #: "png", "jpeg" or "webp", judged from the content
    format: str
    content_type: str
    #: displayed size, after EXIF orientation
    width: int
    height: int
    #: the upload in its own format, metadata removed
    original: StoredBlob
    #: rendition name -> WebP blob fitting that rendition's box
    renditions: dict[str, StoredBlob]
    #: "#rrggbb" to show the image on as a logo (see cassetto.colour)
    background_colour: str

    def blobs(self) -> list[StoredBlob]:
        """The original and every rendition, each distinct key once."""
        seen: dict[str, StoredBlob] = {}
        for blob in (self.original, *self.renditions.values()):
            seen.setdefault(blob.key, blob)
        return list(seen.values())


# ---------------------------------------------------------------------- entry points
def process_image(
    data: bytes,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    renditions: Mapping[str, tuple[int, int]] = DEFAULT_RENDITIONS,
) -> ProcessedImage:
    """Validate an upload and prepare everything to store; raise :class:`InvalidImage` if refused."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # A process-wide Pillow switch; with it on, truncated uploads would load
        # silently with grey bottoms. Changing it here would change it for everyone.
        raise RuntimeError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True; cassetto needs it False to refuse truncated images"
        )
    if not data:
        raise InvalidImage("empty file")
    if len(data) > max_bytes:
        raise InvalidImage(
            f"too large: {_mb(len(data), max_bytes)} MB, the limit is {max_bytes / _MEGABYTE:g} MB"
        )
    if _looks_like_svg(data):
        raise InvalidImage(f"SVG is not accepted; {_USE_INSTEAD} (export the drawing at the size you need)")
    image = _open(data, max_pixels)
    try:
        return _process(image, data, max_pixels, renditions)
    finally:
        image.close()


def store_image(storage: Storage, processed: ProcessedImage) -> None:
    """Put the original and the renditions under their keys, skipping keys already stored.

    Keys are content hashes, so an existing object already holds these very bytes;
    checking first saves the upload (and keeps the object's first write time).
    """
    for blob in processed.blobs():
        if not storage.exists(blob.key):
            storage.put(blob.key, blob.data, blob.content_type, cache_control=IMMUTABLE_CACHE_CONTROL)


# ---------------------------------------------------------------------- opening
def _open(data: bytes, max_pixels: int) -> ImageFile.ImageFile:
    """Read the header only; no pixel data is decompressed yet."""
    try:
        # Only the three accepted decoders see the bytes: other plugins' parsers (some
        # hand files to external programs) never run on uploads.
        return Image.open(io.BytesIO(data), formats=_PILLOW_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own limit (Image.MAX_IMAGE_PIXELS), hit while reading the header: it
        # raises above twice the limit and warns above it (an error under -W error).
        # Warnings filters are process-global and not thread-safe, so they are not
        # touched here; our own check in _process covers everything below Pillow's.
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = int(found.group(1)) if found else None
        if pixels is not None and pixels > max_pixels:
            reason = f"{pixels / 1e6:.1f} megapixels, the limit is {max_pixels / 1e6:g} megapixels"
        else:
            # Only when max_pixels is set above Pillow's own limit, which then wins.
            reason = f"more than Pillow's limit of {(Image.MAX_IMAGE_PIXELS or 0) / 1e6:g} megapixels"
        raise InvalidImage(f"too many pixels: {reason}") from None
    except UnidentifiedImageError:
        name = _sniff_format(data)
        if name in ("PNG", "JPEG", "WebP"):
            raise InvalidImage(f"damaged: the {name} header cannot be read") from None
        if name:
            raise InvalidImage(f"format {name} is not accepted; {_USE_INSTEAD}") from None
        raise InvalidImage("not an image") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise InvalidImage(f"damaged or truncated: {exc}") from None


def _process(
    image: ImageFile.ImageFile, data: bytes, max_pixels: int, boxes: Mapping[str, tuple[int, int]]
) -> ProcessedImage:
    fmt = _FORMATS.get(image.format or "")
    if fmt is None:  # unreachable with _PILLOW_FORMATS, kept in case Pillow maps a format anew
        raise InvalidImage(f"format {image.format} is not accepted; {_USE_INSTEAD}")
    width, height = image.size
    if width * height > max_pixels:
        raise InvalidImage(
            f"too many pixels: {width} x {height} = {width * height / 1e6:.1f} megapixels, "
            f"the limit is {max_pixels / 1e6:g} megapixels"
        )
    if fmt != "jpeg" and getattr(image, "n_frames", 1) > 1:
        raise InvalidImage("animated images are not accepted; use a still PNG, JPEG or WebP")

    stripped: bytes | None = None
    if fmt == "jpeg":
        # A JPEG's EXIF and ICC profile are read from the header, so the decision to
        # keep its compressed data (and decode it at reduced scale) comes before decoding.
        orientation = _orientation(image)
        foreign_profile = _foreign_profile(image)
        if orientation == 1 and foreign_profile is None:
            stripped = _checked_strip(data, image.size)
        if stripped is not None and boxes:
            # The renditions are all the pixels needed: let libjpeg scale by 1/2, 1/4
            # or 1/8 while decoding, down to no less than the largest rendition.
            largest = max((_fit((width, height), box) for box in boxes.values()), key=lambda s: s[0] * s[1])
            image.draft(None, largest)
        _load(image)
    else:
        _load(image)
        # PNG keeps EXIF after the image data, so this comes after the load.
        orientation = _orientation(image)
        foreign_profile = _foreign_profile(image)

    decoded: Image.Image = image
    if orientation != 1:
        decoded = ImageOps.exif_transpose(image)
    if foreign_profile is not None:
        decoded = _to_srgb(decoded, foreign_profile)
    shown = (height, width) if orientation in _SWAPS_AXES else (width, height)

    content_type = ACCEPTED_CONTENT_TYPES[fmt]
    if stripped is not None:
        original = StoredBlob(stripped, content_type, *shown)
    else:
        original = StoredBlob(_encode_original(decoded, fmt, image, data), content_type, *decoded.size)

    renditions, smallest = _renditions(_for_web(decoded), shown, boxes)
    return ProcessedImage(
        format=fmt,
        content_type=content_type,
        width=shown[0],
        height=shown[1],
        original=original,
        renditions=renditions,
        background_colour=logo_background(smallest),
    )


def _load(image: ImageFile.ImageFile) -> None:
    """Decode every pixel: the only way to be sure the file is complete."""
    try:
        image.load()
    except (OSError, EOFError) as exc:
        if isinstance(exc, EOFError) or "truncated" in str(exc).lower():
            raise InvalidImage("truncated: the file ends before the image data does") from None
        raise InvalidImage(f"damaged: {exc}") from None
    except (SyntaxError, ValueError, struct.error, IndexError) as exc:
        raise InvalidImage(f"damaged: {exc}") from None


def _orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(_ORIENTATION, 1)
    except (OSError, SyntaxError, ValueError, struct.error, KeyError, TypeError, IndexError):
        return 1  # unreadable EXIF: nothing to honour, and it is dropped anyway
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


# ---------------------------------------------------------------------- colour profiles
_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def _foreign_profile(image: Image.Image) -> ImageCms.ImageCmsProfile | None:
    """The image's ICC profile if its pixels must be converted to sRGB, else None.

    An sRGB profile is dropped as it is (untagged means sRGB on the web); so is one
    that cannot be read or does not fit the image's mode, as browsers would ignore it.
    """
    icc = image.info.get("icc_profile")
    if not icc or image.mode not in ("RGB", "RGBA", "CMYK"):
        return None
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        description = ImageCms.getProfileDescription(profile)
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return None
    return None if "srgb" in description.lower() else profile


def _to_srgb(image: Image.Image, profile: ImageCms.ImageCmsProfile) -> Image.Image:
    mode = "RGBA" if image.mode == "RGBA" else "RGB"
    try:
        converted = ImageCms.profileToProfile(image, profile, _SRGB, outputMode=mode)
    except (ImageCms.PyCMSError, OSError, ValueError):
        return image  # a profile the image does not match: ignore it as a browser would
    return converted if converted is not None else image


# ---------------------------------------------------------------------- encoding
def _encode_original(image: Image.Image, fmt: str, source: ImageFile.ImageFile, data: bytes) -> bytes:
    """The image re-encoded in its own format with no metadata."""
    # Pillow's PNG writer copies the ICC profile from .info; only transparency (which
    # is pixel data for palette and tRNS images) may stay.
    image.info = {key: value for key, value in image.info.items() if key == "transparency"}
    buffer = io.BytesIO()
    if fmt == "png":
        image.save(buffer, "PNG")
    elif fmt == "jpeg":
        options: dict[str, object] = {"quality": ORIGINAL_QUALITY}
        if isinstance(source, JpegImagePlugin.JpegImageFile) and image.mode == source.mode:
            # The upload's own quantisation tables and chroma subsampling: the same
            # quality as uploaded, neither bloated nor degraded further.
            options = {"qtables": source.quantization}
            sampling = JpegImagePlugin.get_sampling(source)
            if sampling != -1:
                options["subsampling"] = sampling
        image.save(buffer, "JPEG", **options)
    else:
        if _webp_is_lossless(data):
            image.save(buffer, "WEBP", lossless=True, quality=80, method=RENDITION_METHOD)
        else:
            image.save(buffer, "WEBP", quality=ORIGINAL_QUALITY, method=RENDITION_METHOD)
    return buffer.getvalue()


def _for_web(image: Image.Image) -> Image.Image:
    """RGB, or RGBA when the image has any transparency: what WebP can hold."""
    if image.mode in ("RGB", "RGBA"):
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        # 16-bit grey: Pillow's plain conversion clips to 255 instead of scaling.
        return image.convert("I").point(lambda value: value * (1 / 257)).convert("RGB")
    return image.convert("RGBA" if image.has_transparency_data else "RGB")


def _fit(size: tuple[int, int], box: tuple[int, int]) -> tuple[int, int]:
    """``size`` scaled to fit inside ``box``, aspect ratio kept, never enlarged."""
    width, height = size
    scale = min(1.0, box[0] / width, box[1] / height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _renditions(
    image: Image.Image, shown: tuple[int, int], boxes: Mapping[str, tuple[int, int]]
) -> tuple[dict[str, StoredBlob], Image.Image]:
    """WebP renditions, and the smallest rendered image (for the colour analysis)."""
    targets = {name: _fit(shown, box) for name, box in boxes.items()}
    made: list[Image.Image] = [image]
    blobs: dict[str, StoredBlob] = {}
    # Largest first, each resampled from the smallest image already made that is at
    # least as big: the thumbnail comes from the card, not from 12 megapixels. Sizes
    # are computed from the full size, so a draft-decoded source changes no rendition's
    # dimensions.
    for name, size in sorted(targets.items(), key=lambda item: item[1][0] * item[1][1], reverse=True):
        source = min(
            (im for im in made if im.width >= size[0] and im.height >= size[1]),
            key=lambda im: im.width * im.height,
            default=image,
        )
        rendered = source
        if source.size != size:
            rendered = source.resize(size, Image.Resampling.LANCZOS, reducing_gap=REDUCING_GAP)
            made.append(rendered)
        rendered.info = {}
        buffer = io.BytesIO()
        rendered.save(buffer, "WEBP", quality=RENDITION_QUALITY, method=RENDITION_METHOD)
        blobs[name] = StoredBlob(buffer.getvalue(), "image/webp", *size)
    smallest = min(made, key=lambda im: im.width * im.height)
    return {name: blobs[name] for name in boxes}, smallest


# ---------------------------------------------------------------------- sniffing
_XML_START = re.compile(rb"^\s*<(\?xml|svg|!doctype\s+svg|!--)", re.IGNORECASE)


def _looks_like_svg(data: bytes) -> bool:
    head = data[:4096]
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        head = head.decode("utf-16", errors="ignore").encode("ascii", errors="ignore")
    head = head.removeprefix(b"\xef\xbb\xbf")
    return bool(_XML_START.match(head)) or (head.lstrip().startswith(b"<") and b"<svg" in head.lower())


def _sniff_format(data: bytes) -> str | None:
    """Name a format Pillow was not allowed to open, for a useful refusal."""
    signatures = (
        (b"\x89PNG\r\n\x1a\n", "PNG"),
        (b"\xff\xd8\xff", "JPEG"),
        (b"GIF87a", "GIF"),
        (b"GIF89a", "GIF"),
        (b"II*\x00", "TIFF"),
        (b"MM\x00*", "TIFF"),
        (b"BM", "BMP"),
        (b"\x00\x00\x01\x00", "ICO"),
        (b"8BPS", "PSD"),
        (b"%PDF", "PDF"),
        (b"qoif", "QOI"),
        (b"\xff\x0a", "JPEG XL"),
        (b"\x00\x00\x00\x0cJXL ", "JPEG XL"),
    )
    for signature, name in signatures:
        if data.startswith(signature):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in (b"avif", b"avis"):
            return "AVIF"
        if brand in (b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1"):
            return "HEIC"
    return None


def _webp_is_lossless(data: bytes) -> bool:
    """Whether a WebP file's image is VP8L (lossless) rather than VP8 (lossy)."""
    position = 12
    while position + 8 <= len(data):
        fourcc = data[position : position + 4]
        length = int.from_bytes(data[position + 4 : position + 8], "little")
        if fourcc == b"VP8L":
            return True
        if fourcc == b"VP8 ":
            return False
        position += 8 + length + (length & 1)  # chunks are padded to an even length
    return False


# ---------------------------------------------------------------------- JPEG stripping
# Segments a decoder needs: frame headers (SOF0-15, with DHT C4, JPG C8 and DAC CC in
# that range), quantisation tables, DNL, restart interval and the hierarchical
# DHP/EXP. Everything else before the image data is metadata: APP1 (EXIF, XMP), APP2
# (ICC, MPF), APP13 (IPTC), COM (comments) and the rest of the APPn.
_DECODER_MARKERS = frozenset([*range(0xC0, 0xD0), 0xDB, 0xDC, 0xDD, 0xDE, 0xDF])
_STANDALONE_MARKERS = frozenset([0x01, *range(0xD0, 0xD8)])
_SOS, _EOI, _APP0, _APP14 = 0xDA, 0xD9, 0xE0, 0xEE
# Inside entropy-coded data 0xFF is followed by 0x00 (stuffing) or a restart marker;
# anything else is the next segment's marker. Fill bytes (more 0xFF) before it stay
# with the data, where they are still legal. No "\xff+" here: its backtracking makes
# the search ten times slower on a 2 MB photo.
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def strip_jpeg_metadata(data: bytes) -> bytes | None:
    """The JPEG with every metadata segment removed and its image data untouched.

    Keeps what decoding needs, plus the Adobe APP14 segment (it says how to read the
    colour channels) and a JFIF APP0 without its thumbnail. Drops everything after the
    end-of-image marker: phones append previews and depth maps there (MPO). Returns
    None if the structure is not what the JPEG standard describes; the caller then
    re-encodes instead.
    """
    if not data.startswith(b"\xff\xd8"):
        return None
    out = [b"\xff\xd8"]
    position, end = 2, len(data)
    while True:
        if position >= end or data[position] != 0xFF:
            return None
        while position < end and data[position] == 0xFF:  # fill bytes before a marker
            position += 1
        if position >= end:
            return None
        marker = data[position]
        position += 1
        if marker == _EOI:
            out.append(b"\xff\xd9")
            return b"".join(out)
        if marker in _STANDALONE_MARKERS:
            out.append(bytes((0xFF, marker)))
            continue
        if marker in (0x00, 0xD8) or position + 2 > end:
            return None
        length = int.from_bytes(data[position : position + 2], "big")
        if length < 2 or position + length > end:
            return None
        segment = data[position : position + length]
        header = bytes((0xFF, marker))
        position += length
        if marker == _SOS:
            found = _NEXT_MARKER.search(data, position)
            if found is None:
                return None
            out.append(header + segment + data[position : found.start()])
            position = found.start()
        elif marker in _DECODER_MARKERS or (marker == _APP14 and segment[2:7] == b"Adobe"):
            out.append(header + segment)
        elif marker == _APP0 and segment[2:7] == b"JFIF\x00" and length >= 16:
            # Version, units and density; the thumbnail count set to 0x0 and its pixels dropped.
            out.append(header + (16).to_bytes(2, "big") + segment[2:14] + b"\x00\x00")


def _checked_strip(data: bytes, size: tuple[int, int]) -> bytes | None:
    """:func:`strip_jpeg_metadata`, and a header read to confirm the result is that JPEG."""
    stripped = strip_jpeg_metadata(data)
    if stripped is None:
        return None
    try:
        with Image.open(io.BytesIO(stripped), formats=("JPEG",)) as check:
            if check.size == size and "exif" not in check.info and "icc_profile" not in check.info:
                return stripped
    except (OSError, SyntaxError, ValueError, struct.error):
        pass
    return None


def _mb(amount: int, limit: int) -> str:
    """``amount`` in megabytes with one decimal, or two where one would read as the limit."""
    text = f"{amount / _MEGABYTE:.1f}"
    return text if float(text) > limit / _MEGABYTE else f"{amount / _MEGABYTE:.2f}"
