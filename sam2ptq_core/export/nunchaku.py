"""nunchaku W4A4 (SVDQuant) export and its reader.

Layout matched against DeepCompressor's converter, ``deepcompressor/backend/nunchaku/utils.py``
(``NunchakuWeightPacker``, ``convert_to_nunchaku_w4x4y16_linear_weight``) as stored for yottalabsai/deepcompressor
at commit 81c03d9795c1a1e915f074bd09a82a659d00e061, and nunchaku's own ``nunchaku/lora/flux/packer.py``
(nunchaku-tech/nunchaku at commit 1500b84abc317a29b0c820d7729166cc34894bf9): the same view/permute orders.
Facts in shared/notes/nunchaku-format.md. Our code is written from those facts, not copied.

Per quantized linear ``<block>.<name>.`` (N = out, K = in, both padded to 128; r padded to 16):
- ``qweight`` int8 [N, K/2]: int4 codes in [-8, 7]; view (N/128, 8, 2, 8, 1, K/64, 1, 2, 4, 8), permute to
  (n_tile, k_tile, k_pack, n_pack, n_lane, k_lane, n_pack_sz, k_pack_sz, reg_n, reg_k), 8 nibbles per int32 (lowest
  k in the low bits), stored little-endian as int8.
- ``wscales`` [K/64, N] 16-bit, ``bias`` [N], ``smooth`` and ``smooth_orig`` [K]: 128-lane permuted order,
  view (N/128, 1, 8, 2, 4, 2, G) → permute (0, 6, 1, 2, 4, 3, 5). Padding: scales, smooth and bias with 1, as
  deepcompressor-toolkit 0.1.0's converter pads them (padded channels are dropped by the kernel's caller).
- ``bias``: for a shifted layer (input + 0.171875 after GELU, quantized uint4) the kernel feeds the branch the
  *unshifted* input, so the bias is b − shift·W·1 + lora_up·lora_down·shift·1 (``layer_recipe.kernel_bias``), the
  term DeepCompressor's ``convert_to_nunchaku_w4x4y16_linear_state_dict`` adds for its ``shift`` argument.
- ``lora_down`` [K, r] = (a / smooth)ᵀ packed (the kernel feeds the branch the unsmoothed input),
  ``lora_up`` [N, r] = b packed: 16×16 fragments, view (c/16, r/16, 8, 4, 2, 2, 2) order described in _pack_lowrank.
Only sint4 weights and activations in groups of 64 without rotation can be represented.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..algorithms.layer_recipe import GELU_SHIFT
from .nunchaku_support import NunchakuUnsupported, check_supported

__all__ = ["check_supported", "pack_weight", "unpack_weight", "pack_scale", "unpack_scale", "pack_lowrank",
           "unpack_lowrank", "write_nunchaku", "read_nunchaku", "NunchakuUnsupported"]


def _pad(t: torch.Tensor, dim: int, multiple: int, value: float = 0) -> torch.Tensor:
    n = t.shape[dim]
    extra = (-n) % multiple
    if not extra:
        return t
    shape = list(t.shape)
    shape[dim] = extra
    return torch.cat([t, torch.full(shape, value, dtype=t.dtype)], dim=dim)


_W_VIEW = (8, 2, 8, 1, 1, 2, 4, 8)  # num_n_packs, n_pack, n_lanes, reg_n | num_k_packs, k_pack, k_lanes, reg_k
_W_PERM = (0, 5, 6, 1, 3, 8, 2, 7, 4, 9)


def pack_weight(codes: torch.Tensor) -> torch.Tensor:
    """int codes [N, K] (N % 128 == 0, K % 128 == 0, values in [-8, 7]) → int8 [N, K/2]."""
    n, k = codes.shape
    w = codes.to(torch.int32).reshape(n // 128, 8, 2, 8, 1, k // 64, 1, 2, 4, 8).permute(*_W_PERM).contiguous()
    w = (w & 0xF) << torch.arange(0, 32, 4, dtype=torch.int32)
    w = w.sum(dim=-1, dtype=torch.int32)
    return w.view(torch.int8).reshape(n, k // 2)


def unpack_weight(packed: torch.Tensor) -> torch.Tensor:
    """int8 [N, K/2] → int codes [N, K] (sign-extended 4-bit values)."""
    n, k = packed.shape[0], packed.shape[1] * 2
    words = packed.contiguous().view(torch.int32).reshape(n // 128, k // 64, 1, 8, 8, 4, 2, 2, 1)
    nib = (words.unsqueeze(-1) >> torch.arange(0, 32, 4, dtype=torch.int32)) & 0xF
    nib = torch.where(nib >= 8, nib - 16, nib)
    inv = [0] * 10
    for i, p in enumerate(_W_PERM):
        inv[p] = i
    return nib.permute(*inv).reshape(n, k).to(torch.int16)


def pack_scale(s: torch.Tensor) -> torch.Tensor:
    """[N, G] (N % 128 == 0) → the kernel's 128-lane order, shaped [G, N] (G = 1 for bias/smooth)."""
    n, g = s.shape
    return s.reshape(n // 128, 1, 8, 2, 4, 2, g).permute(0, 6, 1, 2, 4, 3, 5).contiguous().view(-1, n)


def unpack_scale(p: torch.Tensor, n: int) -> torch.Tensor:
    g = p.numel() // n
    return p.reshape(n // 128, g, 1, 8, 4, 2, 2).permute(0, 2, 3, 5, 4, 6, 1).contiguous().view(n, g)


def pack_lowrank(w: torch.Tensor, down: bool) -> torch.Tensor:
    """Low-rank factor → fragment order. down: w = a/smooth [r, K] → [K, r]; up: w = b [N, r] → [N, r].
    16×16 fragments (16 = n_pack 2 · n_lanes 8 on the r or N side, k_pack 2 · k_lanes 4 · 2 halves on the other),
    each permuted to (n_lane, k_lane, n_pack, k_pack, half)."""
    if down:
        r, c = w.shape
        w = w.reshape(r // 16, 16, c // 16, 16).permute(2, 0, 1, 3)
    else:
        c, r = w.shape
        w = w.reshape(c // 16, 16, r // 16, 16).permute(0, 2, 1, 3)
    w = w.reshape(c // 16, r // 16, 2, 8, 2, 4, 2).permute(0, 1, 3, 5, 2, 4, 6).contiguous()
    return w.view(c, r)


def unpack_lowrank(p: torch.Tensor, down: bool) -> torch.Tensor:
    c, r = p.shape
    w = p.reshape(c // 16, r // 16, 8, 4, 2, 2, 2).permute(0, 1, 4, 2, 5, 3, 6).contiguous()
    w = w.view(c // 16, r // 16, 16, 16)
    if down:
        return w.permute(1, 2, 0, 3).contiguous().view(r, c)
    return w.permute(0, 2, 1, 3).contiguous().view(c, r)


def _layer_tensors(q: dict, bias: torch.Tensor | None, smooth: torch.Tensor | None, dt: torch.dtype) -> dict:
    codes = q["codes"]
    n, k = codes.shape
    codes = _pad(_pad(codes, 0, 128), 1, 128)
    npad, kpad = codes.shape
    scale = _pad(_pad(q["scale"].float(), 0, 128, 1.0), 1, kpad // 64, 1.0)
    s = torch.ones(k) if smooth is None else smooth.float()
    b = torch.zeros(n) if bias is None else bias.float()
    out = {"qweight": pack_weight(codes), "wscales": pack_scale(scale.to(dt)),
           "bias": pack_scale(_pad(b, 0, 128, 1.0).to(dt)[:, None]).view(-1),
           "smooth": pack_scale(_pad(s, 0, 128, 1.0).to(dt)[:, None]).view(-1)}
    out["smooth_orig"] = out["smooth"].clone()
    if q["a"].numel():
        down = _pad(_pad((q["a"].float() / s).to(dt), 1, 128), 0, 16)  # [r_pad, K_pad]
        up = _pad(_pad(q["b"].float().to(dt), 0, 128), 1, 16)          # [N_pad, r_pad]
        out["lora_down"] = pack_lowrank(down, down=True)
        out["lora_up"] = pack_lowrank(up, down=False)
    return out


def write_nunchaku(d: Path, cfg, model, qlayers: dict, smooth: dict, schemes: dict) -> None:
    """``hiera_blocks.safetensors`` (every quantized linear) + ``unquantized_layers.safetensors`` (everything else,
    including mixed precision's fallback layers in 16-bit, which the metadata of both files names). ``schemes``:
    {layer: LayerScheme} of every quantizable layer (shift and fallback from there)."""
    check_supported(cfg)
    from ..config import config_hash
    d.mkdir(parents=True, exist_ok=True)
    dt = getattr(torch, cfg.quant.wgts.scale_dtype)
    blocks, shapes = {}, {}
    for name, q in qlayers.items():
        b = q["kernel_bias"] if q["kernel_bias"].numel() else None
        for key, t in _layer_tensors(q, b, smooth.get(name), dt).items():
            blocks[f"{name}.{key}"] = t.contiguous()
        shapes[name] = {"out": int(q["codes"].shape[0]), "in": int(q["codes"].shape[1]), "rank": int(q["a"].shape[0])}
        shift = schemes[name].shift
        if shift:  # its input arrives shifted (GELU + shift, fused into the kernel before) and is quantized uint4
            shapes[name]["act_unsigned"], shapes[name]["act_shift"] = True, shift
    rank = max((v["rank"] for v in shapes.values()), default=0)
    unsigned = sorted(n for n, v in shapes.items() if v.get("act_unsigned"))
    meta = {"model": cfg.model.name, "config_hash": config_hash(cfg), "shapes": json.dumps(shapes),
            "quantization_config": json.dumps({
                "method": "svdquant", "weight": {"dtype": "int4", "scale_dtype": cfg.quant.wgts.scale_dtype,
                                                 "group_size": 64},
                "activation": {"dtype": "int4", "scale_dtype": cfg.quant.wgts.scale_dtype, "group_size": 64,
                               # SVDQuant's second MLP layer: input + shift after GELU, uint4 [0, 15], the bias
                               # already holds −shift·W·1 (+ the branch share, see ``bias`` above)
                               "unsigned": {"shift": GELU_SHIFT, "layers": unsigned} if unsigned else None},
                "rank": rank}), "fallback_layers": json.dumps(sorted(k for k, s in schemes.items() if s.fallback))}
    save_file(blocks, str(d / "hiera_blocks.safetensors"), metadata=meta)
    quantized = {f"vision_encoder.backbone.{n}.{p}" for n in qlayers for p in ("weight", "bias")}
    rest = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items() if k not in quantized}
    save_file(rest, str(d / "unquantized_layers.safetensors"), metadata={
        "model": cfg.model.name, "config_hash": meta["config_hash"], "fallback_layers": meta["fallback_layers"]})


def read_nunchaku(d: Path) -> tuple[dict, dict, dict]:
    """Unpack ``hiera_blocks.safetensors`` → ({layer: {codes, scale, bias, smooth, a, b, act_shift}}, unquantized
    state, meta). ``bias`` is the kernel's (with a shift and a branch it holds the branch's share of the shift).
    ``a`` is recovered as lora_down · smooth (exact in float32)."""
    with safe_open(str(d / "hiera_blocks.safetensors"), "pt") as f:
        meta = f.metadata()
        t = {k: f.get_tensor(k) for k in f.keys()}
    shapes = json.loads(meta["shapes"])
    layers = {}
    for name, sh in shapes.items():
        n, k, r = sh["out"], sh["in"], sh["rank"]
        npad = t[f"{name}.qweight"].shape[0]
        kpad = t[f"{name}.qweight"].shape[1] * 2
        smooth = unpack_scale(t[f"{name}.smooth"], kpad)[:k, 0].float()
        rec = {"codes": unpack_weight(t[f"{name}.qweight"])[:n, :k],
               "scale": unpack_scale(t[f"{name}.wscales"], npad)[:n, :-(-k // 64)].float(),
               "bias": unpack_scale(t[f"{name}.bias"], npad)[:n, 0].float(), "smooth": smooth}
        if r:
            down = unpack_lowrank(t[f"{name}.lora_down"], down=True)[:r, :k].float()
            rec["a"] = down * smooth
            rec["b"] = unpack_lowrank(t[f"{name}.lora_up"], down=False)[:n, :r].float()
        rec["act_shift"] = float(sh.get("act_shift", 0.0))
        layers[name] = rec
    with safe_open(str(d / "unquantized_layers.safetensors"), "pt") as f:
        rest = {k: f.get_tensor(k) for k in f.keys()}
    return layers, rest, meta
