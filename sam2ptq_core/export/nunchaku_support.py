"""What nunchaku's W4A4 (SVDQuant) format can represent, checked on the config alone (no torch import), so a
run that asks for an impossible export fails before any work starts."""
from __future__ import annotations

__all__ = ["NunchakuUnsupported", "check_supported"]


class NunchakuUnsupported(ValueError):
    """The config cannot be represented in nunchaku's W4A4 format (one-line message naming what is needed)."""


def check_supported(cfg) -> None:
    q = cfg.quant
    need = []
    if q.wgts.dtype != "sint4" or q.wgts.group_shapes != [[1, 64]]:
        need.append("quant.wgts.dtype sint4 with group_shapes [[1, 64]]")
    if q.ipts.dtype != "sint4" or q.ipts.group_shapes != [[1, 64]]:
        need.append("quant.ipts.dtype sint4 with group_shapes [[1, 64]]")
    if q.rotation is not None:
        need.append("quant.rotation null (nunchaku has no online rotation)")
    if q.wgts.scale_dtype is None:
        need.append("quant.wgts.scale_dtype float16 or bfloat16 (nunchaku stores 16-bit scales)")
    if q.mixed is not None and q.mixed.fallback != "fp16":
        need.append("quant.mixed.fallback fp16 (nunchaku keeps fallback layers in 16-bit, it has no int8 path)")
    if need:
        twin = f"configs/hiera_{cfg.model.name.replace('-', '_')}_w4a4_nunchaku.yaml"
        raise NunchakuUnsupported("--convert-nunchaku supports only W4A4 SVDQuant (sint4 weights/activations, group "
                                  "64, 16-bit scales, no rotation); set " + "; ".join(need)
                                  + f", or use the ready config {twin}")
