"""Image loading that survives real-world files.

EXIF orientation is applied; grayscale, palette, RGBA, CMYK and 16-bit images become 8-bit RGB;
a missing or corrupt file raises :class:`ImageError` naming the file; Pillow's decompression-bomb
guard stays on. A slightly truncated file (the last bytes missing, which every viewer still shows)
is decoded in Pillow's tolerant mode with one warning naming the file, unless images are strict
(``rcnn --strict-images``, or ``RCNN_STRICT_IMAGES=1``: the setting reaches worker processes too).

A network that resizes its input to a shorter side ``min_side`` (longer side at most ``max_side``)
gets large photos decoded near that size (:func:`load_image_for`, :func:`fit_image`): JPEGs through
libjpeg's DCT scaling (1/2, 1/4, 1/8), then an integer box-filter reduction, never below the size
the network resizes to. That saves the full decode and the float copy of a 12-megapixel photo (a
quarter of a second each on a CPU) and anti-aliases the network's own bilinear resize.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from rcnn_cli.errors import ImageError
from rcnn_cli.log import logger

if TYPE_CHECKING:  # torch is imported where needed: proposal workers start without it
    import torch

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit (or 32-bit) single channel: map the full 16-bit range onto 8 bits.
        arr = np.asarray(img, dtype=np.float64)
        arr = np.clip(arr / 257.0, 0, 255).round().astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Composite transparent pixels onto black, the value padding uses elsewhere.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


_STRICT_ENV = "RCNN_STRICT_IMAGES"
_warned: set[str] = set()


def set_strict_images(strict: bool) -> None:
    """Refuse truncated images everywhere (this process and the workers it starts)."""
    os.environ[_STRICT_ENV] = "1" if strict else "0"


def strict_images() -> bool:
    return os.environ.get(_STRICT_ENV, "0") == "1"


def network_size(width: int, height: int, min_side: int, max_side: int) -> tuple[float, float]:
    """``(width, height)`` of an image after the detection networks' resize: shorter side to
    ``min_side``, unless the longer side would pass ``max_side`` (torchvision's
    ``GeneralizedRCNNTransform``)."""
    scale = min(min_side / min(width, height), max_side / max(width, height))
    return width * scale, height * scale


def reduction(width: int, height: int, min_side: int, max_side: int) -> int:
    """The largest integer factor an image of ``width x height`` pixels can be shrunk by and still be
    at least its :func:`network_size` on both sides (1: no shrinking)."""
    w, h = network_size(width, height, min_side, max_side)
    return max(1, int(min(width / w, height / h)))


def fit_image(image: Image.Image, min_side: int, max_side: int) -> tuple[Image.Image, int]:
    """``image`` shrunk by its :func:`reduction` ``k`` (box filter: pixel ``x`` of the result covers
    ``k * x .. k * x + k`` of ``image``, the last one less), and ``k`` (1: the same image)."""
    k = reduction(image.width, image.height, min_side, max_side)
    return (image if k == 1 else image.reduce(k)), k


def _decode(path: Path, tolerant: bool, fit: tuple[int, int] | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """The upright RGB image and its full upright size ``(width, height)``; with ``fit``
    ``(min_side, max_side)`` the image is decoded shrunk (see the module docstring)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as img:
            full = img.size
            if fit is not None and img.format == "JPEG":
                k = reduction(*full, *fit)
                img.draft(img.mode, (-(-full[0] // k), -(-full[1] // k)))  # at least 1/k of the size
            previous = ImageFile.LOAD_TRUNCATED_IMAGES
            ImageFile.LOAD_TRUNCATED_IMAGES = tolerant
            try:
                img.load()
            finally:
                ImageFile.LOAD_TRUNCATED_IMAGES = previous
            turned = img.getexif().get(0x0112, 1) in (5, 6, 7, 8)
            image = _to_rgb(ImageOps.exif_transpose(img))
    if fit is not None:
        image = fit_image(image, *fit)[0]
    return image, (full[1], full[0]) if turned else full


def _truncated(error: Exception) -> bool:
    text = str(error).lower()
    return "truncated" in text or "broken data stream" in text


def load_image(path: str | os.PathLike, strict: bool | None = None) -> Image.Image:
    """Open ``path`` as an upright 8-bit RGB ``PIL.Image`` (fully decoded).

    A file that fails to decode only because it is truncated is decoded again in Pillow's tolerant
    mode (the missing rows are grey) and used, with one warning per file; ``strict`` (default: the
    process setting, :func:`set_strict_images`) refuses it instead.
    """
    return _load(Path(path), strict, None)[0]


def load_image_for(path: str | os.PathLike, min_side: int, max_side: int) -> tuple[Image.Image, tuple[float, float]]:
    """:func:`load_image` for a network that resizes to ``min_side`` / ``max_side``: the image decoded
    shrunk where it is at least twice that size, and ``(sx, sy)``: boxes in the file's pixels times
    these are boxes in the returned image's (``1 / k`` for a shrinking by ``k``, whose last pixel may
    cover less than ``k``)."""
    image, full = _load(Path(path), None, (int(min_side), int(max_side)))
    return image, (1.0 / round(full[0] / image.width), 1.0 / round(full[1] / image.height))


def _load(path: Path, strict: bool | None, fit: tuple[int, int] | None) -> tuple[Image.Image, tuple[int, int]]:
    if not path.is_file():
        raise ImageError(f"{path}: image file not found")
    try:
        return _decode(path, tolerant=False, fit=fit)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"{path}: image too large ({e})") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not a readable image") from None
    except (OSError, SyntaxError, ValueError) as e:
        if not _truncated(e) or (strict_images() if strict is None else strict):
            raise ImageError(f"{path}: corrupt or truncated image ({e})") from None
        damage = str(e)
    try:
        image, full = _decode(path, tolerant=True, fit=fit)
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{path}: corrupt or truncated image ({e})") from None
    if str(path) not in _warned:
        _warned.add(str(path))
        logger.warning("%s: %s; decoded what is there (%dx%d; the rest is grey)", path, damage, *full)
    return image, full


def inspect_image(path: str | os.PathLike) -> str | None:
    """``None`` for an image that decodes cleanly, else what is wrong with a truncated one that the
    tolerant mode still decodes; an unreadable file raises :class:`ImageError`."""
    try:
        load_image(path, strict=True)
        return None
    except ImageError as e:
        if "truncated" not in str(e) and "broken data stream" not in str(e):
            raise
        load_image(path, strict=False)
        return str(e).split(": ", 1)[-1]


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` after EXIF orientation, reading only the header."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            w, h = img.size
            orientation = img.getexif().get(0x0112, 1)
    except FileNotFoundError:
        raise ImageError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError) as e:
        raise ImageError(f"{path}: not a readable image ({e})") from None
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def to_tensor(img: Image.Image) -> "torch.Tensor":
    """``(3, H, W)`` float32 tensor in ``[0, 1]`` from an RGB image."""
    import torch

    arr = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)
