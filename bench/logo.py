"""``python -m bench.logo``: how long :func:`cassetto.images.process_image` takes on a photo.

Generates a 4000x3000 photo-like JPEG (colour gradients under per-channel noise,
quality 90, with camera EXIF and a GPS position), runs ``process_image`` on it ten
times (validation, metadata stripping, three WebP renditions, background colour) and
prints the minimum, median and maximum in milliseconds and whether the median is under
the 300 ms target.

A second line does the same for the photo marked as taken sideways (EXIF orientation
6), which cannot keep its compressed data: it is decoded in full, turned and re-encoded.
That is the slow path; the target is for the first line.
"""

from __future__ import annotations

import io
import statistics
import time

from PIL import ExifTags, Image

from cassetto.images import process_image

TARGET_MS = 300.0
SIZE = (4000, 3000)
ITERATIONS = 10


def photo(orientation: int = 1, size: tuple[int, int] = SIZE) -> bytes:
    """A JPEG that decodes and compresses like a camera photo, with the EXIF a camera writes."""
    horizontal = Image.linear_gradient("L").rotate(90).resize(size)
    vertical = Image.linear_gradient("L").resize(size)
    radial = Image.radial_gradient("L").resize(size)
    # Noise on every channel keeps the entropy-coded data photo-sized (3.5 to 4 MB);
    # smooth gradients alone would compress to almost nothing and decode too fast.
    channels = [
        Image.blend(Image.effect_noise(size, 20), gradient, 0.5)
        for gradient in (horizontal, vertical, radial)
    ]
    image = Image.merge("RGB", channels)
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "Mercato"
    exif[ExifTags.Base.Model] = "Bench Camera"
    exif[ExifTags.Base.DateTime] = "2026:01:02 03:04:05"
    exif[ExifTags.Base.Orientation] = orientation
    exif[ExifTags.IFD.GPSInfo] = {1: "N", 2: (45.0, 27.0, 51.0), 3: "E", 4: (9.0, 11.0, 25.0)}
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90, exif=exif.tobytes())
    return buffer.getvalue()


def run(iterations: int = ITERATIONS, orientation: int = 1) -> dict[str, float]:
    """Time ``process_image`` on :func:`photo`; milliseconds, plus the photo's size in bytes."""
    data = photo(orientation)
    process_image(data)  # warm-up: plugin registration, first allocations
    timings: list[float] = []
    for _ in range(iterations):
        started = time.perf_counter()
        process_image(data)
        timings.append((time.perf_counter() - started) * 1000)
    return {
        "min_ms": min(timings),
        "median_ms": statistics.median(timings),
        "max_ms": max(timings),
        "target_ms": TARGET_MS,
        "bytes": float(len(data)),
    }


def _line(label: str, result: dict[str, float]) -> str:
    verdict = "under" if result["median_ms"] < TARGET_MS else "OVER"
    return (
        f"{label}: min {result['min_ms']:.0f} ms, median {result['median_ms']:.0f} ms, "
        f"max {result['max_ms']:.0f} ms ({result['bytes'] / 1e6:.1f} MB JPEG); "
        f"median {verdict} the {TARGET_MS:.0f} ms target"
    )


def main() -> None:
    print(f"process_image on a {SIZE[0]}x{SIZE[1]} JPEG, {ITERATIONS} runs", flush=True)
    upright = run()
    print(_line("upright (metadata stripped, image data kept)", upright), flush=True)
    sideways = run(orientation=6)
    print(_line("sideways (decoded in full, turned, re-encoded)", sideways), flush=True)


if __name__ == "__main__":
    main()
