"""Calibration and evaluation images: folder listing, seeded sampling, decoding and SAM2 preprocessing.

Preprocessing follows transformers' ``Sam2ImageProcessor``: convert to RGB, resize to ``size``×``size`` without
keeping the aspect ratio (bilinear, antialiased when shrinking — PIL's BILINEAR filter), /255, normalise with the
ImageNet mean/std. Prompts in original pixel coordinates are scaled by size/W and size/H.
"""
from __future__ import annotations

import logging
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, ImageOps

from ..files import file_sha256

if TYPE_CHECKING:
    import torch

__all__ = ["IMAGE_SUFFIXES", "DataError", "ImageRecord", "list_images", "select_images", "load_rgb",
           "resize_uint8", "normalize", "scale_points", "MEAN", "STD", "listing_digest", "files_digest",
           "preprocess"]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}  # GIF: its first frame
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
MAX_PIXELS = 178_956_970  # PIL's own default bomb limit; larger images are refused, not decoded


class DataError(ValueError):
    """A problem with the image folder, with a one-line message."""


@dataclass(frozen=True)
class ImageRecord:
    path: str
    size: int
    sha256: str


def list_images(folder: str | Path) -> list[Path]:
    """Image files below ``folder`` (recursive, by suffix), sorted for determinism."""
    p = Path(folder)
    if not str(folder) or not p.is_dir():
        raise DataError(f"image folder '{folder}' does not exist; set --quant.calib.path to a folder of images")
    files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"image folder '{folder}' holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def load_rgb(path: Path) -> Image.Image:
    """Decode to 8-bit RGB with EXIF orientation applied; raises on corrupt files and decompression bombs."""
    import numpy as np

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as im:
            if im.width * im.height > MAX_PIXELS:
                raise Image.DecompressionBombError(f"{im.width}x{im.height} pixels exceeds {MAX_PIXELS}")
            im.load()
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                im = Image.fromarray(_to_8bit(np.asarray(im, dtype=np.float64), im.mode), "L")
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA")
                bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(bg, im)
            return im.convert("RGB")


def _to_8bit(arr, mode: str):
    """Greyscale with more than 8 bits → uint8 by its bit depth, not by the image's own maximum (a dark 16-bit
    photo must stay dark): 16-bit and 32-bit integer modes (PNG/TIFF 16-bit) as 0..65535, float as 0..1."""
    import numpy as np
    full = 1.0 if mode == "F" else 65535.0
    return np.clip(np.round(arr / full * 255), 0, 255).astype(np.uint8)


def select_images(folder: str | Path, num: int, seed: int, exclude: set[str] = frozenset(),
                  what: str = "calibration", only_names: set[str] | None = None) -> tuple[list[Path], int]:
    """Seeded choice of ``num`` decodable images (excluding paths in ``exclude``; restricted to file names in
    ``only_names`` when given). Returns (paths, n_skipped)."""
    files = [f for f in list_images(folder)
             if str(f) not in exclude and (only_names is None or f.name in only_names)]
    random.Random(seed).shuffle(files)
    chosen, bad, why = [], [], {}
    for f in files:
        if len(chosen) == num:
            break
        try:
            load_rgb(f)
            chosen.append(f)
        except (OSError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            bad.append(f.name)
            why[f] = str(e).splitlines()[0]
    _warn_unreadable(folder, why)
    if len(chosen) < num:
        unreadable = f" ({len(bad)} unreadable: {', '.join(bad[:3])}{', …' if len(bad) > 3 else ''})" if bad else ""
        raise DataError(f"{what} folder '{folder}' has {len(chosen)} usable images{unreadable} but {num} were asked "
                        f"for; lower num_samples or add images")
    return chosen, len(bad)


_WARNED: set[tuple[str, int, int]] = set()  # unreadable files already named in this process: (path, size, mtime)


def _warn_unreadable(folder, why: dict[Path, str]) -> None:
    """One warning line for the unreadable files of a selection that this process has not named yet: preflight,
    the calibration stage and the held-out draw decode the same files, and a skipped file is said once."""
    new = {}
    for f, reason in why.items():
        st = f.stat()
        k = (str(f.resolve()), st.st_size, st.st_mtime_ns)
        if k not in _WARNED:
            _WARNED.add(k)
            new[f.name] = reason
    if new:
        named = ", ".join(f"{n} ({r})" for n, r in list(new.items())[:3])
        more = f" and {len(new) - 3} more" if len(new) > 3 else ""
        log.warning("skipping %d unreadable image%s in %s: %s%s", len(new), "s" if len(new) > 1 else "", folder,
                    named, more)


def held_out(eval_path: str, calib_path: str, num: int, seed: int, calib_paths: set[str],
             only_names: set[str] | None = None) -> list[Path]:
    """The evaluation images: ``num`` from ``eval_path`` or, without one, a seeded choice from the calibration
    folder disjoint from ``calib_paths`` (seed + 1)."""
    paths, _ = select_images(eval_path or calib_path, num, seed + 1, exclude=set() if eval_path else calib_paths,
                             what="evaluation (held out from calibration)", only_names=only_names)
    return paths


def resize_uint8(im: Image.Image, size: int) -> torch.Tensor:
    """[3, size, size] uint8: plain resize (no aspect ratio), bilinear with antialiasing."""
    import torch

    r = im.resize((size, size), Image.Resampling.BILINEAR)
    import numpy as np
    return torch.from_numpy(np.asarray(r, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def normalize(x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """uint8 [..., 3, H, W] → normalised float: (x/255 − mean) / std."""
    import torch

    mean = torch.tensor(MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float32).view(3, 1, 1)
    return ((x.float() / 255.0 - mean) / std).to(dtype or torch.float32)


def scale_points(points: torch.Tensor, width: int, height: int, size: int) -> torch.Tensor:
    """(x, y) in original pixels [..., 2] → coordinates of the resized size×size input."""
    import torch

    f = torch.tensor([size / width, size / height], dtype=points.dtype)
    return points * f


def listing_digest(folder: str | Path) -> str:
    """sha256 of the folder's image listing (relative path and size of each file): cheap even for huge folders."""
    import hashlib
    root = Path(folder)
    h = hashlib.sha256()
    for f in list_images(folder):
        h.update(f"{f.relative_to(root)}\t{f.stat().st_size}\n".encode())
    return h.hexdigest()


def files_digest(cache, paths: list[Path]) -> dict[str, str]:
    """Content sha256 of each file, memoised in ``cache`` (a diskcache.Cache or any object with get/set) by
    (path, size, mtime)."""
    out = {}
    for f in paths:
        st = f.stat()
        k = ("sha", str(f.resolve()), st.st_size, st.st_mtime_ns)
        h = cache.get(k)
        if h is None:
            h = file_sha256(f)
            cache.set(k, h)
        out[str(f)] = h
    return out


def preprocess(cache, path: Path, sha: str, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Resized uint8 [3, size, size] and the original (H, W), through the evictable per-image ``cache``."""
    import torch

    k = ("img", sha, size)
    hit = cache.get(k)
    if hit is not None:
        return torch.frombuffer(bytearray(hit[0]), dtype=torch.uint8).view(3, size, size).clone(), tuple(hit[1])
    im = load_rgb(path)
    x = resize_uint8(im, size)
    cache.set(k, (x.numpy().tobytes(), (im.height, im.width)))
    return x, (im.height, im.width)
