"""Reading scene images with clear errors."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError

DEFAULT_MAX_PIXELS = 64_000_000


def open_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open and fully decode a still image, or raise :class:`InputError` naming the file.

    Refused: missing files, unrecognised or damaged data, images above ``max_pixels`` (checked
    from the header, before decoding: decompression bombs), images under 2x2 pixels and
    animations (which frame is meant is ambiguous). EXIF orientation is applied.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file (0 bytes)")
    try:
        with Image.open(path) as handle:
            width, height = handle.size
            if width * height > max_pixels:
                raise InputError(f"{path}: image of {width}x{height} pixels exceeds the limit of {max_pixels} pixels")
            if width < 2 or height < 2:
                raise InputError(f"{path}: image of {width}x{height} pixels is too small")
            frames = getattr(handle, "n_frames", 1)
            if frames > 1 and handle.format != "MPO":  # MPO: camera JPEGs whose first frame is the photo
                raise InputError(f"{path}: animated or multi-page image ({frames} frames); save the wanted frame "
                                 "as a still image")
            image = ImageOps.exif_transpose(handle)
            image.load()
            return image
    except InputError:
        raise
    except UnidentifiedImageError:
        raise InputError(f"{path}: not an image (unrecognised format)") from None
    except Image.DecompressionBombError as err:  # Pillow refuses the header itself above its own limit
        found = re.search(r"\((\d+) pixels\)", str(err))
        size = f"{found.group(1)} pixels" if found else "too many pixels"
        limit = min(max_pixels, 2 * (Image.MAX_IMAGE_PIXELS or max_pixels))
        raise InputError(f"{path}: image of {size} exceeds the limit of {limit} pixels") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise InputError(f"{path}: unreadable image ({err})") from None


EXIF_ORIENTATION = 0x0112


def exif_orientation(path: str | Path) -> int:
    """The file's EXIF orientation tag (1 = upright, also when absent or unreadable)."""
    try:
        with Image.open(path) as handle:
            return int(handle.getexif().get(EXIF_ORIENTATION, 1) or 1)
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError):
        return 1


def lossy_or_truncated(path: str | Path) -> str | None:
    """Why the file cannot hold exact integer labels, or ``None``: lossy formats (JPEG, lossy
    WebP) change values near edges; Pillow decodes 16-bit colour PNGs to their high bytes only."""
    path = Path(path)
    with open(path, "rb") as handle:
        head = handle.read(32)
    if head[:3] == b"\xff\xd8\xff":
        return "JPEG is lossy (it invents colours at instance edges)"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP" and head[12:16] == b"VP8 ":
        return "lossy WebP changes colours at instance edges"
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        bit_depth, colour_type = head[24], head[25]
        if bit_depth == 16 and colour_type in (2, 6):  # 16-bit RGB / RGBA
            return "16-bit colour PNG: Pillow keeps only the high byte of each channel (instances can merge)"
    return None


def _grey_to_uint8(image: Image.Image, path: Path) -> np.ndarray:
    """16-bit, 32-bit integer and float single-channel images as 8-bit grey levels."""
    array = np.asarray(image, dtype=np.float64)
    if not np.all(np.isfinite(array)):
        raise InputError(f"{path}: image has NaN or infinite pixel values")
    if image.mode.startswith("I;16"):
        scale = 65535.0
    elif image.mode == "F" and array.max() <= 1.0:
        scale = 1.0  # float images in [0, 1]
    else:
        scale = 65535.0 if array.max() > 255 else 255.0
    return np.clip(array / scale * 255.0, 0, 255).round().astype(np.uint8)


def load_rgb(path: str | Path, background: tuple[int, int, int] = (255, 255, 255),
             max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """An RGB uint8 array ``[H, W, 3]``; transparency is composited on ``background`` (white).

    Palette, grey, 16-bit, float and CMYK images are converted; see :func:`open_image` for what
    is refused.
    """
    path = Path(path)
    image = open_image(path, max_pixels)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        image = Image.alpha_composite(canvas, rgba)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return np.repeat(_grey_to_uint8(image, path)[..., None], 3, axis=2)
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def png_bytes(image: np.ndarray | Image.Image) -> bytes:
    """PNG file bytes of an ``[H, W(, C)]`` uint8 array or a PIL image."""
    import io

    buffer = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_png(path: str | Path, image: np.ndarray | Image.Image) -> Path:
    """Write ``image`` as a PNG at ``path`` atomically (temporary name, then rename)."""
    from .files import write_atomic

    path = Path(path)
    write_atomic(path, png_bytes(image))
    return path
