"""cassetto's image work: what is refused, what is stripped, the renditions, the background colour.

Every image is drawn with Pillow here; there are no binary fixtures.
"""

from __future__ import annotations

import io
import random
import re
import struct
import zlib
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import ExifTags, Image, ImageCms, ImageDraw, ImageFile, PngImagePlugin

from cassetto.colour import analyse_logo, contrast_ratio, logo_background, main_colour, relative_luminance
from cassetto.images import (
    DEFAULT_RENDITIONS,
    InvalidImage,
    ProcessedImage,
    StoredBlob,
    process_image,
    strip_jpeg_metadata,
)

HEX = re.compile(r"^#[0-9a-f]{6}$")
KEY = re.compile(r"^sha256/([0-9a-f]{2})/([0-9a-f]{2})/([0-9a-f]{64})\.(png|jpg|webp)$")
Colour = tuple[int, int, int]


# ---------------------------------------------------------------------- drawing
def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def halves(size: tuple[int, int], left: Colour = (220, 20, 20), right: Colour = (20, 20, 220)) -> Image.Image:
    """Left half one colour, right half another: orientation shows in where they end up."""
    image = Image.new("RGB", size, right)
    image.paste(left, (0, 0, size[0] // 2, size[1]))
    return image


def noise(size: tuple[int, int]) -> Image.Image:
    """Incompressible enough that cutting the file loses real image data."""
    grey = Image.effect_noise(size, 60)
    return Image.merge("RGB", (grey, grey.transpose(Image.Transpose.FLIP_LEFT_RIGHT), grey))


def logo(
    ink: Colour,
    backdrop: tuple[int, int, int, int] = (0, 0, 0, 0),
    size: tuple[int, int] = (240, 160),
) -> Image.Image:
    """A logo-like drawing: a ring, a bar and a dot in ``ink`` on ``backdrop``."""
    image = Image.new("RGBA", size, backdrop)
    draw = ImageDraw.Draw(image)
    w, h = size
    draw.ellipse((w * 0.1, h * 0.15, w * 0.45, h * 0.85), outline=(*ink, 255), width=max(3, w // 24))
    draw.rectangle((w * 0.55, h * 0.3, w * 0.9, h * 0.45), fill=(*ink, 255))
    draw.ellipse((w * 0.6, h * 0.55, w * 0.75, h * 0.75), fill=(*ink, 255))
    return image


def distance(a: Colour, b: Colour) -> float:
    return float(sum((x - y) ** 2 for x, y in zip(a, b, strict=True)) ** 0.5)


def rgb(hex_colour: str) -> Colour:
    value = int(hex_colour[1:], 16)
    return (value >> 16) & 0xFF, (value >> 8) & 0xFF, value & 0xFF


def crafted_png(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` and whose data is a few bytes."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def opened(blob: StoredBlob) -> Image.Image:
    image = Image.open(io.BytesIO(blob.data))
    image.load()
    return image


def refused(data: bytes, **options: object) -> str:
    with pytest.raises(InvalidImage) as raised:
        process_image(data, **options)  # type: ignore[arg-type]
    return raised.value.reason


# ---------------------------------------------------------------------- accepted formats
def test_png_with_alpha_keeps_alpha_and_loses_text_chunks() -> None:
    image = logo((20, 40, 160), size=(600, 400))
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", "Jane Doe, 12 Secret Street")
    info.add_itxt("Comment", "private note", zip=True)
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "SpyCam"
    data = encode(image, "PNG", pnginfo=info, icc_profile=srgb, exif=exif.tobytes())

    processed = process_image(data)

    assert (processed.format, processed.content_type) == ("png", "image/png")
    assert (processed.width, processed.height) == (600, 400)
    original = opened(processed.original)
    assert (original.format, original.mode, original.size) == ("PNG", "RGBA", (600, 400))
    # The pixels are the upload's; the ICC, EXIF and text chunks are gone.
    assert original.tobytes() == image.tobytes()
    for chunk_type in (b"tEXt", b"iTXt", b"zTXt", b"iCCP", b"eXIf"):
        assert chunk_type not in processed.original.data
    assert b"Secret Street" not in processed.original.data
    thumb = opened(processed.renditions["thumb"])
    assert thumb.mode == "RGBA"
    alpha = thumb.getchannel("A").getextrema()
    assert alpha == (0, 255)


def test_jpeg_exif_is_stripped_and_its_orientation_applied() -> None:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # stored sideways: turn 90 degrees clockwise to show
    exif[ExifTags.Base.Make] = "SpyCam"
    exif[ExifTags.Base.DateTime] = "2024:05:06 07:08:09"
    exif[ExifTags.IFD.GPSInfo] = {1: "N", 2: (52.0, 22.0, 1.5), 3: "E", 4: (4.0, 53.0, 0.0)}
    data = encode(halves((400, 300)), "JPEG", quality=92, exif=exif.tobytes(), comment=b"shot at home")

    processed = process_image(data)

    assert (processed.format, processed.content_type) == ("jpeg", "image/jpeg")
    assert (processed.width, processed.height) == (300, 400)
    original = opened(processed.original)
    assert original.format == "JPEG"
    assert original.size == (300, 400)
    assert dict(original.getexif()) == {}
    assert "comment" not in original.info
    for secret in (b"Exif", b"SpyCam", b"2024:05:06", b"shot at home"):
        assert secret not in processed.original.data
    # The left half (red) is on top once turned clockwise; the right half (blue) below.
    red, blue = original.getpixel((150, 50)), original.getpixel((150, 350))
    assert isinstance(red, tuple) and isinstance(blue, tuple)
    assert red[0] > 180 and red[2] < 60
    assert blue[2] > 180 and blue[0] < 60
    large = opened(processed.renditions["large"])
    assert large.size == (300, 400)  # smaller than the box: not enlarged
    top = large.getpixel((150, 50))
    assert isinstance(top, tuple) and top[0] > 180


def test_jpeg_needing_no_rotation_keeps_its_image_data_and_loses_its_metadata() -> None:
    image = noise((640, 480))
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 1
    exif[ExifTags.Base.Model] = "Pocket 3000"
    exif[ExifTags.IFD.GPSInfo] = {1: "N", 2: (52.0, 22.0, 1.5)}
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    data = encode(
        image,
        "JPEG",
        quality=85,
        progressive=True,
        exif=exif.tobytes(),
        xmp=b"<x:xmpmeta>creator: Jane</x:xmpmeta>",
        icc_profile=srgb,
        comment=b"a comment",
    )
    data += b"appended after the end of the image"

    processed = process_image(data)

    stripped = processed.original.data
    assert stripped.startswith(b"\xff\xd8") and stripped.endswith(b"\xff\xd9")
    for secret in (b"Exif", b"Pocket 3000", b"xmpmeta", b"ICC_PROFILE", b"a comment", b"appended"):
        assert secret not in stripped
    assert len(stripped) < len(data)
    # Not re-encoded: the decoded pixels are exactly those of the upload.
    upload = Image.open(io.BytesIO(data))
    assert opened(processed.original).tobytes() == upload.convert("RGB").tobytes()


def test_jpeg_strip_keeps_the_adobe_segment_of_a_cmyk_jpeg() -> None:
    cmyk = Image.new("CMYK", (120, 80), (0, 200, 200, 0))
    data = encode(cmyk, "JPEG", quality=90)
    stripped = strip_jpeg_metadata(data)
    assert stripped is not None
    assert b"Adobe" in stripped
    assert Image.open(io.BytesIO(stripped)).tobytes() == Image.open(io.BytesIO(data)).tobytes()
    processed = process_image(data)
    assert opened(processed.renditions["thumb"]).mode == "RGB"
    assert strip_jpeg_metadata(b"not a jpeg") is None
    assert strip_jpeg_metadata(data[:-40]) is None


def test_mpo_from_a_phone_keeps_only_its_first_picture() -> None:
    first, second = halves((200, 150)), Image.new("RGB", (200, 150), (0, 255, 0))
    data = encode(first, "MPO", save_all=True, append_images=[second])
    assert Image.open(io.BytesIO(data)).format == "MPO"

    processed = process_image(data)

    assert processed.format == "jpeg"
    original = opened(processed.original)
    assert original.format == "JPEG"
    assert getattr(original, "n_frames", 1) == 1
    assert len(processed.original.data) < len(data) * 0.7


def test_webp_lossy_and_lossless_are_accepted_and_stripped() -> None:
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "SpyCam"
    lossy = encode(halves((300, 200)), "WEBP", quality=80, exif=exif.tobytes(), xmp=b"<x>creator</x>")
    processed = process_image(lossy)
    assert (processed.format, processed.content_type, processed.width) == ("webp", "image/webp", 300)
    assert b"SpyCam" not in processed.original.data and b"creator" not in processed.original.data
    assert b"VP8 " in processed.original.data

    drawing = logo((200, 30, 30), size=(200, 120))
    lossless = process_image(encode(drawing, "WEBP", lossless=True))
    assert b"VP8L" in lossless.original.data
    assert opened(lossless.original).tobytes() == drawing.tobytes()


def test_palette_png_keeps_its_transparency() -> None:
    image = logo((10, 120, 60), size=(200, 100)).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    image.info["transparency"] = 0
    processed = process_image(encode(image, "PNG", transparency=0))
    original = opened(processed.original)
    assert original.mode == "P" and "transparency" in original.info
    assert opened(processed.renditions["card"]).mode == "RGBA"


def test_sixteen_bit_grey_png_is_scaled_not_clipped() -> None:
    grey = Image.new("I;16", (100, 100), 30000)  # 46% grey; clipping would make it white
    processed = process_image(encode(grey, "PNG"))
    value = opened(processed.renditions["thumb"]).getpixel((50, 50))
    assert isinstance(value, tuple)
    assert 100 < value[0] < 140


def _renamed_srgb_profile() -> bytes:
    """sRGB under another name: cassetto must convert through it, and the result is unchanged."""
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    renamed = srgb.replace("sRGB".encode("utf-16-be"), "Wide".encode("utf-16-be"))
    assert renamed != srgb
    description = ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(renamed)))
    assert "srgb" not in description.lower()
    return renamed


def test_a_non_srgb_profile_is_converted_then_dropped() -> None:
    profile = _renamed_srgb_profile()
    data = encode(halves((300, 200)), "JPEG", quality=95, icc_profile=profile)

    processed = process_image(data)

    # Converted, so re-encoded rather than stripped; no profile left in any output.
    assert processed.original.data != strip_jpeg_metadata(data)
    for blob in processed.blobs():
        assert "icc_profile" not in opened(blob).info
    left = opened(processed.original).getpixel((40, 100))
    assert isinstance(left, tuple)
    assert distance((left[0], left[1], left[2]), (220, 20, 20)) < 12

    drawing = logo((30, 90, 200), size=(200, 120))
    png = process_image(encode(drawing, "PNG", icc_profile=profile))
    converted = opened(png.original)
    assert "icc_profile" not in converted.info
    assert converted.mode == "RGBA"
    assert converted.getchannel("A").tobytes() == drawing.getchannel("A").tobytes()


def test_a_foreign_icc_profile_never_reaches_the_output() -> None:
    lab = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()
    data = encode(halves((200, 100)), "JPEG", icc_profile=lab)
    processed = process_image(data)
    for blob in processed.blobs():
        assert "icc_profile" not in opened(blob).info


# ---------------------------------------------------------------------- refusals
def test_gif_is_refused_by_name() -> None:
    data = encode(Image.new("RGB", (50, 50), (1, 2, 3)), "GIF")
    assert refused(data) == "format GIF is not accepted; use PNG, JPEG or WebP"


@pytest.mark.parametrize("fmt", ["BMP", "TIFF", "ICO"])
def test_other_formats_are_refused_by_name(fmt: str) -> None:
    data = encode(Image.new("RGB", (32, 32), (1, 2, 3)), fmt)
    assert refused(data) == f"format {fmt} is not accepted; use PNG, JPEG or WebP"


@pytest.mark.parametrize(
    "data",
    [
        b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
        b'  <svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect/></svg>',
        b"\xef\xbb\xbf<!-- logo -->\n<svg><circle r='4'/></svg>",
        '<svg xmlns="http://www.w3.org/2000/svg"/>'.encode("utf-16"),
    ],
    ids=["xml-declaration", "bare", "bom-and-comment", "utf-16"],
)
def test_svg_is_refused_with_its_own_message(data: bytes) -> None:
    assert refused(data).startswith("SVG is not accepted; use PNG, JPEG or WebP")


@pytest.mark.parametrize(
    "data",
    [random.Random(7).randbytes(4096), b"Hello, this is a text file.\n", b"\x00" * 100],
    ids=["random", "text", "zeros"],
)
def test_bytes_that_are_no_image_are_refused(data: bytes) -> None:
    assert refused(data) == "not an image"


def test_an_empty_file_is_refused() -> None:
    assert refused(b"") == "empty file"


@pytest.mark.parametrize(
    "make",
    [
        lambda: encode(noise((400, 300)), "PNG"),
        lambda: encode(noise((400, 300)), "JPEG", quality=90),
        lambda: encode(noise((400, 300)), "JPEG", quality=90, progressive=True),
    ],
    ids=["png", "jpeg", "progressive-jpeg"],
)
@pytest.mark.parametrize("keep", [0.5, 0.97])
def test_truncated_files_are_refused(make: Callable[[], bytes], keep: float) -> None:
    data = make()
    reason = refused(data[: int(len(data) * keep)])
    assert reason == "truncated: the file ends before the image data does"


def test_a_truncated_webp_is_refused() -> None:
    data = encode(noise((200, 150)), "WEBP", quality=90)
    assert refused(data[: len(data) // 2]).startswith("damaged or truncated")


def test_a_broken_png_header_is_refused_as_damaged() -> None:
    data = bytearray(crafted_png(10, 10))
    data[20] ^= 0xFF  # inside IHDR: the CRC no longer matches
    assert refused(bytes(data)) == "damaged: the PNG header cannot be read"


def test_too_many_bytes_are_refused_before_decoding() -> None:
    # Not even an image: the size alone is enough to refuse it.
    data = b"\x89PNG\r\n\x1a\n" + bytes(int(6.2 * 1024 * 1024) - 8)
    assert refused(data) == "too large: 6.2 MB, the limit is 5 MB"
    assert refused(encode(noise((300, 300)), "PNG"), max_bytes=100_000).startswith("too large: 0.")


def test_too_many_pixels_are_refused_from_the_header() -> None:
    # 49 megapixels claimed by a 100-byte file: refused before any pixel is decompressed.
    assert refused(crafted_png(7000, 7000)) == (
        "too many pixels: 7000 x 7000 = 49.0 megapixels, the limit is 40 megapixels"
    )
    # Beyond Pillow's own decompression-bomb limit: Pillow stops at the header too.
    reason = refused(crafted_png(100_000, 100_000))
    assert reason == "too many pixels: 10000.0 megapixels, the limit is 40 megapixels"
    # A limit set above Pillow's: Pillow's refusal stands and says whose limit it is.
    reason = refused(crafted_png(100_000, 100_000), max_pixels=10**11)
    assert reason.startswith("too many pixels: more than Pillow's limit of")


def test_a_real_but_compressible_big_image_is_refused_under_a_lower_limit() -> None:
    data = encode(Image.new("RGB", (2000, 1500), (9, 9, 9)), "PNG")
    assert len(data) < 50_000
    assert refused(data, max_pixels=2_000_000) == (
        "too many pixels: 2000 x 1500 = 3.0 megapixels, the limit is 2 megapixels"
    )


def test_animated_images_are_refused() -> None:
    frames = [Image.new("RGB", (40, 40), colour) for colour in ((255, 0, 0), (0, 255, 0))]
    for fmt in ("PNG", "WEBP"):
        data = encode(frames[0], fmt, save_all=True, append_images=frames[1:])
        assert refused(data).startswith("animated images are not accepted")


def test_pillow_loading_truncated_images_is_a_setup_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        process_image(encode(halves((20, 20)), "PNG"))


# ---------------------------------------------------------------------- renditions
@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((2000, 1000), {"thumb": (160, 80), "card": (480, 240), "large": (1280, 640)}),
        ((1000, 2000), {"thumb": (80, 160), "card": (180, 360), "large": (480, 960)}),
        ((4000, 3000), {"thumb": (160, 120), "card": (480, 360), "large": (1280, 960)}),
        ((600, 100), {"thumb": (160, 27), "card": (480, 80), "large": (600, 100)}),
    ],
)
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_renditions_fit_their_box_keep_the_aspect_and_are_webp(
    size: tuple[int, int], expected: dict[str, tuple[int, int]], fmt: str
) -> None:
    processed = process_image(encode(halves(size), fmt))
    assert set(processed.renditions) == set(DEFAULT_RENDITIONS)
    for name, blob in processed.renditions.items():
        assert (blob.width, blob.height) == expected[name], name
        assert blob.content_type == "image/webp"
        image = opened(blob)
        assert (image.format, image.size) == ("WEBP", expected[name])
        box = DEFAULT_RENDITIONS[name]
        assert image.width <= box[0] and image.height <= box[1]
        assert abs(image.width / image.height - size[0] / size[1]) < 0.05 * size[0] / size[1]


def test_small_images_are_never_enlarged_and_identical_renditions_share_a_key() -> None:
    processed = process_image(encode(logo((200, 0, 0), size=(100, 50)), "PNG"))
    assert {(b.width, b.height) for b in processed.renditions.values()} == {(100, 50)}
    keys = {blob.key for blob in processed.renditions.values()}
    assert len(keys) == 1
    assert len(processed.blobs()) == 2  # the original and one rendition


def test_custom_renditions() -> None:
    processed = process_image(encode(halves((800, 400)), "PNG"), renditions={"icon": (32, 32)})
    assert list(processed.renditions) == ["icon"]
    assert (processed.renditions["icon"].width, processed.renditions["icon"].height) == (32, 16)


def test_the_same_upload_gets_the_same_content_addressed_keys() -> None:
    data = encode(logo((20, 40, 160)), "PNG")
    first, second = process_image(data), process_image(data)

    assert [b.key for b in first.blobs()] == [b.key for b in second.blobs()]
    for blob in first.blobs():
        match = KEY.match(blob.key)
        assert match is not None, blob.key
        assert match.group(3) == blob.sha256
        assert (match.group(1), match.group(2)) == (blob.sha256[:2], blob.sha256[2:4])
    assert first.original.key.endswith(".png")
    assert first.renditions["thumb"].key.endswith(".webp")
    assert process_image(encode(halves((50, 50)), "JPEG")).original.key.endswith(".jpg")
    assert process_image(encode(logo((20, 40, 161)), "PNG")).original.key != first.original.key


# ---------------------------------------------------------------------- colour
def test_contrast_ratio_follows_wcag() -> None:
    assert contrast_ratio("#000000", "#ffffff") == pytest.approx(21.0)
    assert contrast_ratio("#ffffff", "#000000") == pytest.approx(21.0)
    assert contrast_ratio("#3366cc", "#3366cc") == pytest.approx(1.0)
    # #767676 on white is the classic "just passes 4.5:1" grey.
    assert contrast_ratio("#767676", "#ffffff") == pytest.approx(4.54, abs=0.01)
    assert relative_luminance("#ffffff") == pytest.approx(1.0)
    with pytest.raises(ValueError, match="not a #rrggbb"):
        contrast_ratio("red", "#000000")


LOGOS: dict[str, tuple[Image.Image, Colour]] = {
    "dark-blue-on-transparent": (logo((20, 40, 120)), (20, 40, 120)),
    "dark-blue-on-white": (logo((20, 40, 120), (255, 255, 255, 255)), (20, 40, 120)),
    "near-black-on-transparent": (logo((12, 12, 14)), (12, 12, 14)),
    "white-on-transparent": (logo((255, 255, 255)), (255, 255, 255)),
    "orange-on-dark-green": (logo((255, 140, 0), (20, 80, 30, 255)), (255, 140, 0)),
}


@pytest.mark.parametrize("name", list(LOGOS))
def test_the_background_contrasts_with_the_logo(name: str) -> None:
    image, ink = LOGOS[name]
    background = logo_background(image)
    main = main_colour(image)

    assert HEX.match(background), background
    assert HEX.match(main), main
    assert distance(rgb(main), ink) < 12, (main, ink)
    assert contrast_ratio(background, main) >= 3.0
    assert contrast_ratio(background, ink) >= 3.0


def test_a_logo_on_transparent_gets_a_tint_of_its_own_colour() -> None:
    analysis = analyse_logo(LOGOS["dark-blue-on-transparent"][0])
    assert analysis.edge is None
    r, g, b = rgb(analysis.background)
    assert b > r and b > g  # still blue, only lighter
    assert relative_luminance(analysis.background) > relative_luminance(analysis.main)


def test_a_white_logo_gets_a_dark_background() -> None:
    assert relative_luminance(logo_background(LOGOS["white-on-transparent"][0])) < 0.3


def test_a_logo_with_its_own_dark_backdrop_keeps_it() -> None:
    analysis = analyse_logo(LOGOS["orange-on-dark-green"][0])
    assert analysis.edge is not None
    assert distance(rgb(analysis.edge), (20, 80, 30)) < 4
    # Already 4:1 against the orange: the tile is the logo's own green.
    assert distance(rgb(analysis.background), (20, 80, 30)) < 8


def test_a_backdrop_without_contrast_is_moved_only_as_far_as_needed() -> None:
    image = logo((200, 60, 60), (170, 50, 50, 255))  # red on a slightly darker red
    analysis = analyse_logo(image)
    assert contrast_ratio(analysis.background, analysis.main) >= 3.0
    assert contrast_ratio(analysis.background, analysis.main) < 3.3
    r, g, b = rgb(analysis.background)
    assert r > g and r > b  # still a red


def test_process_image_reports_the_background_colour() -> None:
    image, ink = LOGOS["dark-blue-on-transparent"]
    processed: ProcessedImage = process_image(encode(image, "PNG"))
    assert HEX.match(processed.background_colour)
    assert contrast_ratio(processed.background_colour, ink) >= 3.0
    assert processed.background_colour == logo_background(image)


@settings(max_examples=60, deadline=None)
@given(
    ink=st.tuples(st.integers(0, 255), st.integers(0, 255), st.integers(0, 255)),
    shape=st.sampled_from(["logo", "square", "full"]),
    size=st.tuples(st.integers(8, 300), st.integers(8, 300)),
)
def test_any_solid_logo_on_transparent_gets_a_contrasting_background(
    ink: Colour, shape: str, size: tuple[int, int]
) -> None:
    if shape == "logo":
        image = logo(ink, size=size)
    else:
        image = Image.new("RGBA", size, (0, 0, 0, 0))
        inset = (size[0] // 4, size[1] // 4, size[0] - size[0] // 4, size[1] - size[1] // 4)
        image.paste((*ink, 255), (0, 0, *size) if shape == "full" else inset)
    background = logo_background(image)
    assert HEX.match(background)
    assert contrast_ratio(background, main_colour(image)) >= 3.0
    assert contrast_ratio(background, ink) >= 3.0
