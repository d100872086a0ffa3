"""Reading scene images with clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError

DEFAULT_MAX_PIXELS = 64_000_000


def open_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open and fully decode an image, or raise :class:`InputError` naming the file."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    try:
        with Image.open(path) as handle:
            width, height = handle.size
            if width * height > max_pixels:
                raise InputError(f"{path}: image of {width}x{height} pixels exceeds the limit of {max_pixels} pixels")
            if width < 2 or height < 2:
                raise InputError(f"{path}: image of {width}x{height} pixels is too small")
            image = ImageOps.exif_transpose(handle)
            image.load()
            return image
    except InputError:
        raise
    except UnidentifiedImageError:
        raise InputError(f"{path}: not an image (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise InputError(f"{path}: unreadable image ({err})") from None


def load_rgb(path: str | Path, background: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """An RGB uint8 array ``[H, W, 3]``; transparency is composited on ``background`` (white)."""
    image = open_image(path)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        image = Image.alpha_composite(canvas, rgba)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        scale = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        array = np.clip(array / scale * 255.0, 0, 255).astype(np.uint8)
        return np.repeat(array[..., None], 3, axis=2)
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
