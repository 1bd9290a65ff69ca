"""Cheap checks of a run's inputs before any work starts, each failing with one line that names the fix."""
from __future__ import annotations

from pathlib import Path

from .config import RunConfig
from .stages import StageError

__all__ = ["preflight"]


def preflight(cfg: RunConfig) -> None:
    from ..sam2.images import list_images
    list_images(cfg.quant.calib.path)
    if cfg.quant.eval.path:
        list_images(cfg.quant.eval.path)
    if cfg.quant.eval.annotations and not Path(cfg.quant.eval.annotations).is_file():
        raise StageError(f"quant.eval.annotations file {cfg.quant.eval.annotations} does not exist")
    if cfg.model.path:
        from ..sam2.variants import check_checkpoint_dir
        check_checkpoint_dir(cfg.model.path)
    if cfg.model.device == "cuda":
        from .runtime import device_of
        device_of(cfg)
    if cfg.convert_nunchaku:
        from ..export.nunchaku import check_supported
        check_supported(cfg)
