"""A background colour for a logo: the tile a product's logo sits on in the storefront.

This is what the old "Vivace" service did. From the logo alone it finds

* the logo's *main colour*: the dominant colour of its opaque pixels, leaving out
  near-white pixels and the logo's own background (the colour of its opaque edges);
* a *background colour* the logo reads well on: for a logo whose edges are transparent
  or light, a tint or shade of its main colour; for a logo drawn on an opaque, non-light
  background of its own, that background colour, so the logo blends into the tile.
  Either way the lightness is then moved towards white or black, whichever gets there
  sooner, until the WCAG 2.x contrast ratio with the main colour is at least 3:1 (the
  WCAG minimum for graphics).

Everything works on a copy scaled down to at most 64x64 pixels, so the cost does not
depend on the size of the upload.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

__all__ = [
    "MIN_CONTRAST",
    "LogoColours",
    "analyse_logo",
    "contrast_ratio",
    "logo_background",
    "main_colour",
    "relative_luminance",
]

RGB = tuple[int, int, int]
RGBA = tuple[int, int, int, int]

#: WCAG 2.x minimum contrast for graphical objects; every background meets it
MIN_CONTRAST = 3.0
#: contrast aimed at when the background is derived from the logo's colour rather than
#: taken from its own edges: comfortably above the minimum, and always reachable (one
#: of white or black is at least 4.58:1 against any colour)
DERIVED_CONTRAST = 4.5
#: contrast aimed at when the logo's own edge colour is extended: a little above the
#: minimum, because the main colour is estimated from a sample and may be a few levels
#: off the logo's real ink
EDGE_CONTRAST = 3.15
#: the logo is analysed on a copy fitting this box
SAMPLE_BOX = (64, 64)
#: alpha from which a pixel counts as opaque; anti-aliased outlines stay out
OPAQUE_ALPHA = 200
#: alpha below which an edge pixel counts as transparent
TRANSPARENT_ALPHA = 128
#: a pixel with every channel at least this is near-white: paper, not brand colour
NEAR_WHITE = 235
#: relative luminance from which an edge counts as light
LIGHT_LUMINANCE = 0.7
#: RGB distance within which a pixel counts as the logo's own background colour
BACKGROUND_DISTANCE = 48
#: bits kept per channel when counting colours (16 levels: 4096 buckets)
BUCKET_BITS = 4

_HEX = re.compile(r"^#?([0-9a-fA-F]{6})$")
# sRGB channel value -> linear light, the first step of WCAG's relative luminance.
_LINEAR = tuple(
    c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in (i / 255 for i in range(256))
)


# ---------------------------------------------------------------------- contrast
def parse_hex(colour: str) -> RGB:
    """``"#rrggbb"`` (or ``"rrggbb"``) as a tuple of three 0-255 ints."""
    match = _HEX.match(colour.strip())
    if match is None:
        raise ValueError(f"{colour!r} is not a #rrggbb colour")
    value = int(match.group(1), 16)
    return (value >> 16) & 0xFF, (value >> 8) & 0xFF, value & 0xFF


def to_hex(rgb: RGB) -> str:
    """A tuple of three 0-255 ints as ``"#rrggbb"``."""
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def relative_luminance(colour: str | RGB) -> float:
    """WCAG 2.x relative luminance, 0 for black to 1 for white."""
    r, g, b = parse_hex(colour) if isinstance(colour, str) else colour
    return 0.2126 * _LINEAR[r] + 0.7152 * _LINEAR[g] + 0.0722 * _LINEAR[b]


def contrast_ratio(first: str | RGB, second: str | RGB) -> float:
    """WCAG 2.x contrast ratio of two colours, from 1.0 (same) to 21.0 (black on white)."""
    a, b = relative_luminance(first), relative_luminance(second)
    lighter, darker = max(a, b), min(a, b)
    return (lighter + 0.05) / (darker + 0.05)


# ---------------------------------------------------------------------- analysis
@dataclass(frozen=True)
class LogoColours:
    """What :func:`analyse_logo` found, every colour as ``"#rrggbb"``."""

    #: the logo's dominant colour, its own background and near-white left out
    main: str
    #: the dominant colour of the opaque edge pixels; None when the edges are transparent
    edge: str | None
    #: the colour to show the logo on
    background: str


def analyse_logo(image: Image.Image) -> LogoColours:
    """Main colour, edge colour and background colour of a logo, in one pass."""
    pixels, border = _sample(image)
    edge = _edge_colour(border)
    main = _main_colour(pixels, edge)
    if edge is None or relative_luminance(edge) >= LIGHT_LUMINANCE:
        # Transparent or light edges: the tile takes the logo's own colour, lightened or
        # darkened far enough to stand apart from it.
        background = _reach_contrast(main, main, DERIVED_CONTRAST)
    else:
        # The logo brings its own backdrop; extend it, moved only as far as contrast
        # needs, so the logo's box does not show on the tile.
        background = _reach_contrast(edge, main, EDGE_CONTRAST)
    return LogoColours(
        main=to_hex(main),
        edge=None if edge is None else to_hex(edge),
        background=to_hex(background),
    )


def main_colour(image: Image.Image) -> str:
    """The logo's main colour as ``"#rrggbb"`` (see the module docstring)."""
    return analyse_logo(image).main


def logo_background(image: Image.Image) -> str:
    """A ``"#rrggbb"`` background the logo reads well on (contrast at least 3:1)."""
    return analyse_logo(image).background


def _sample(image: Image.Image) -> tuple[list[RGBA], list[RGBA]]:
    """All pixels and the border pixels of a small RGBA copy of ``image``."""
    width, height = image.size
    scale = min(1.0, SAMPLE_BOX[0] / width, SAMPLE_BOX[1] / height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    source = image
    if source.mode not in ("RGB", "RGBA", "L", "LA"):
        # Palette, 1-bit, 16-bit and CMYK images either cannot be resampled smoothly or
        # have no alpha to carry: make them RGBA first (they are rarely large).
        source = source.convert("RGBA")
    # BOX averages every source pixel and reducing_gap lets Pillow shrink by whole
    # factors first: fast on a photo-sized image, and no colour is invented at edges.
    if size != image.size:
        # Resampled with premultiplied alpha ("RGBa"): the colour of a transparent pixel
        # (often white or black) must not bleed into the logo's thin strokes.
        if source.mode in ("RGBA", "LA"):
            source = source.convert("RGBA").convert("RGBa")
        source = source.resize(size, Image.Resampling.BOX, reducing_gap=2.0)
    small = source.convert("RGBA")
    raw = small.tobytes()
    pixels: list[RGBA] = [(raw[i], raw[i + 1], raw[i + 2], raw[i + 3]) for i in range(0, len(raw), 4)]
    w, h = small.size
    border = [pixels[y * w + x] for y in range(h) for x in range(w) if x in (0, w - 1) or y in (0, h - 1)]
    return pixels, border


def _dominant(pixels: list[RGBA]) -> RGB | None:
    """The average of the most populated colour bucket, or None for no pixels."""
    if not pixels:
        return None
    shift = 8 - BUCKET_BITS
    buckets: dict[tuple[int, int, int], list[int]] = {}
    for r, g, b, _a in pixels:
        entry = buckets.setdefault((r >> shift, g >> shift, b >> shift), [0, 0, 0, 0])
        entry[0] += 1
        entry[1] += r
        entry[2] += g
        entry[3] += b
    # Ties go to the bucket with the larger key, so the answer never depends on order.
    _key, (count, r_sum, g_sum, b_sum) = max(buckets.items(), key=lambda item: (item[1][0], item[0]))
    return round(r_sum / count), round(g_sum / count), round(b_sum / count)


def _edge_colour(border: list[RGBA]) -> RGB | None:
    transparent = sum(1 for pixel in border if pixel[3] < TRANSPARENT_ALPHA)
    if transparent * 2 >= len(border):
        return None
    return _dominant([pixel for pixel in border if pixel[3] >= TRANSPARENT_ALPHA])


def _main_colour(pixels: list[RGBA], edge: RGB | None) -> RGB:
    opaque = [pixel for pixel in pixels if pixel[3] >= OPAQUE_ALPHA]
    near_white = [min(r, g, b) >= NEAR_WHITE for r, g, b, _a in opaque]
    if edge is None:
        background = [False] * len(opaque)
    else:
        er, eg, eb = edge
        limit = BACKGROUND_DISTANCE**2
        background = [(r - er) ** 2 + (g - eg) ** 2 + (b - eb) ** 2 < limit for r, g, b, _a in opaque]
    flags = list(zip(opaque, background, near_white, strict=True))
    # Widen the net until something is left: a white logo on transparent has only
    # near-white pixels, a flat square of colour nothing but its own "background".
    groups: tuple[Callable[[], list[RGBA]], ...] = (
        lambda: [p for p, bg, white in flags if not bg and not white],
        lambda: [p for p, bg, _white in flags if not bg],
        lambda: [p for p, _bg, white in flags if not white],
        lambda: opaque,
        lambda: [p for p in pixels if p[3] > 0],
    )
    for group in groups:
        found = _dominant(group())
        if found is not None:
            return found
    return (0, 0, 0)  # a fully transparent image: any colour will do, black is the usual ink


def _mix(colour: RGB, target: int, share: float) -> RGB:
    r, g, b = (round(c + (target - c) * share) for c in colour)
    return r, g, b


def _reach_contrast(start: RGB, against: RGB, minimum: float) -> RGB:
    """``start`` moved towards white or black, as little as gives ``minimum`` contrast.

    Mixing with white or black keeps the hue; both directions are tried and the one
    that needs the smaller step wins. Contrast is measured on the rounded colour that is
    returned, so rounding can never take it below the minimum.
    """
    if contrast_ratio(start, against) >= minimum:
        return start
    steps = 256
    best: tuple[int, float, RGB] | None = None
    for target in (255, 0):
        for step in range(1, steps + 1):
            candidate = _mix(start, target, step / steps)
            ratio = contrast_ratio(candidate, against)
            if ratio >= minimum:
                # Fewer steps first; at equal steps the higher contrast.
                if best is None or (step, -ratio) < (best[0], -best[1]):
                    best = (step, ratio, candidate)
                break
    if best is None:
        # Unreachable for minimum <= 4.58, kept so a larger minimum still gets the best
        # of the two extremes instead of an exception.
        return max(((255, 255, 255), (0, 0, 0)), key=lambda extreme: contrast_ratio(extreme, against))
    return best[2]
