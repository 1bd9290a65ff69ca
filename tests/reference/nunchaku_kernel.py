"""The consumers of a nunchaku export, independent of sam2ptq_core:

- ``deepcompressor_convert``: DeepCompressor's own converter (deepcompressor-toolkit 0.1.0,
  ``convert_to_nunchaku_w4x4y16_linear_state_dict``) run on an output tree's ``cache/`` files, as its FLUX driver
  feeds it (weight, ``scale.0``, bias, smooth, branch and the ShiftedLinear ``shift`` buffer from model.pt).
- ``kernel_forward``: a float64 model of what nunchaku's W4A4 kernels compute from the packed tensors, written from
  the documented layout (shared/notes/nunchaku-format.md) with explicit index formulas, not with the exporter's
  view/permute code.

Kernel semantics modelled (nunchaku's fused GEMM): tokens x [T, K] (K zero-padded), for a shifted layer the
preceding GELU kernel quantizes x + shift; x' = (x [+ shift]) / smooth is quantized per token in groups of 64
channels, signed int4 with scale absmax/7 codes clamped to [-8, 7], or, for a shifted (unsigned) layer, uint4 with
scale max/15 codes in [0, 15]; the int4 GEMM multiplies codes·act_scale by codes·wscale; the low-rank branch reads
the *unshifted, unsmoothed* x through lora_down [K, r] and lora_up [N, r]; the bias is added last.
"""
from __future__ import annotations

from pathlib import Path

import torch

PREFIX = "vision_encoder.backbone."


def _pad_to(t: torch.Tensor, dim: int, multiple: int, value: float = 0.0) -> torch.Tensor:
    extra = (-t.shape[dim]) % multiple
    if not extra:
        return t
    shape = list(t.shape)
    shape[dim] = extra
    return torch.cat([t, torch.full(shape, value, dtype=t.dtype)], dim=dim)


def deepcompressor_convert(cache: Path, dtype: torch.dtype) -> dict[str, dict[str, torch.Tensor]]:
    """{layer: DeepCompressor's nunchaku tensors} for every quantized linear of ``cache/`` (model.pt, scale.pt,
    smooth.pt, branch.pt). What DeepCompressor's model.pt would hold in the model dtype is cast to ``dtype``:
    weight (exactly code·scale, so its round(W / scale) recovers the codes), bias and the branch's up-projection.
    ``a`` stays float32 when the layer is smoothed (ours is exactly lora_down·smooth, which the converter's float64
    division turns back into lora_down). DeepCompressor asserts the width divides by the group size, and names a
    one-group scale ``wcscales`` (per-channel): the input width is zero-padded to the kernel's multiple of 128 first
    (Hiera's 96 with groups of 64 → 128), the added groups with scale 1, smooth 1 and zero ``a`` columns."""
    from deepcompressor.backend.nunchaku.convert import convert_to_nunchaku_w4x4y16_linear_state_dict

    def load(name):
        p = cache / name
        return torch.load(p, weights_only=True) if p.is_file() else {}
    state, scales, smooth, branch = load("model.pt"), load("scale.pt"), load("smooth.pt"), load("branch.pt")
    out = {}
    for key, scale in scales.items():
        if not key.endswith(".weight.scale.0"):
            continue
        full = key[: -len(".weight.scale.0")]
        w = _pad_to(state[f"{full}.weight"], 1, 128).to(dtype)
        scale = _pad_to(scale, 2, w.shape[1] // 64, 1.0)
        s = smooth.get(full)
        s = None if s is None else _pad_to(s, 0, 128, 1.0)
        lora = None
        if full in branch:
            a = _pad_to(branch[full]["a.weight"], 1, 128)
            lora = (a if s is not None else a.to(dtype), branch[full]["b.weight"].to(dtype))
        bias = state.get(f"{full}.bias")
        out[full[len(PREFIX):]] = convert_to_nunchaku_w4x4y16_linear_state_dict(
            weight=w, scale=scale, bias=None if bias is None else bias.to(dtype), smooth=s, lora=lora,
            shift=state.get(f"{full}.shift"))
    return out


def _word_index(n: torch.Tensor, k: torch.Tensor, kt: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(int32 word, nibble) holding int4 code (n, k): n = tile·128 + frag·16 + pack·8 + lane,
    k = ktile·64 + kpack·32 + klane·8 + reg; words ordered (tile, ktile, frag, lane, klane, pack, kpack)."""
    tile, frag, pack, lane = n // 128, (n % 128) // 16, (n % 16) // 8, n % 8
    ktile, kpack, klane, reg = k // 64, (k % 64) // 32, (k % 32) // 8, k % 8
    word = (((((tile * kt + ktile) * 8 + frag) * 8 + lane) * 4 + klane) * 2 + pack) * 2 + kpack
    return word, reg


def unpack_codes(qweight: torch.Tensor) -> torch.Tensor:
    n_pad, k_pad = qweight.shape[0], qweight.shape[1] * 2
    words = qweight.contiguous().view(torch.int32).reshape(-1).long() & 0xFFFFFFFF
    n = torch.arange(n_pad).view(-1, 1).expand(n_pad, k_pad)
    k = torch.arange(k_pad).view(1, -1).expand(n_pad, k_pad)
    w, nib = _word_index(n, k, k_pad // 64)
    c = (words[w] >> (4 * nib)) & 0xF
    return torch.where(c >= 8, c - 16, c)


def unpack_lanes(p: torch.Tensor, n_pad: int) -> torch.Tensor:
    """[N, G] from the 128-lane order: n = tile·128 + a·16 + b·8 + c·2 + d stored at
    ((((tile·G + g)·8 + a)·4 + c)·2 + b)·2 + d."""
    flat = p.reshape(-1)
    g_count = flat.numel() // n_pad
    n = torch.arange(n_pad).view(-1, 1).expand(n_pad, g_count)
    g = torch.arange(g_count).view(1, -1).expand(n_pad, g_count)
    tile, a, b, c, d = n // 128, (n % 128) // 16, (n % 16) // 8, (n % 8) // 2, n % 2
    return flat[((((tile * g_count + g) * 8 + a) * 4 + c) * 2 + b) * 2 + d]


def unpack_fragments(p: torch.Tensor, down: bool) -> torch.Tensor:
    """A low-rank factor from 16×16 fragments: element (row i, col j) of the [C, r] fragment grid, with the
    16-wide side split as pack·8 + lane and the other as kpack·8 + klane·2 + half, stored at
    ((((((cf·RF + rf)·8 + lane)·4 + klane)·2 + pack)·2 + kpack)·2 + half). down: [K, r] → [r, K]; up: [N, r]."""
    c_dim, r_dim = p.shape
    flat = p.reshape(-1)
    rf_count = r_dim // 16
    if down:  # fragments over (r rows: pack/lane, K cols: kpack/klane/half)
        r = torch.arange(r_dim).view(-1, 1).expand(r_dim, c_dim)
        c = torch.arange(c_dim).view(1, -1).expand(r_dim, c_dim)
        side16, other = r, c
        cf, rf = c // 16, r // 16
    else:  # fragments over (N rows: pack/lane, r cols: kpack/klane/half)
        c = torch.arange(c_dim).view(-1, 1).expand(c_dim, r_dim)
        r = torch.arange(r_dim).view(1, -1).expand(c_dim, r_dim)
        side16, other = c, r
        cf, rf = c // 16, r // 16
    pack, lane = (side16 % 16) // 8, side16 % 8
    kpack, klane, half = (other % 16) // 8, (other % 8) // 2, other % 2
    idx = ((((((cf * rf_count + rf) * 8 + lane) * 4 + klane) * 2 + pack) * 2 + kpack) * 2 + half)
    return flat[idx]


def _act_quant(x: torch.Tensor, unsigned: bool) -> torch.Tensor:
    t, k = x.shape
    g = x.view(t, k // 64, 64)
    if unsigned:
        s = g.amax(-1, keepdim=True) / 15
        lo, hi = 0, 15
    else:
        s = g.abs().amax(-1, keepdim=True) / 7
        lo, hi = -8, 7
    s = torch.where(s > 0, s, torch.ones_like(s))
    return (torch.clamp(torch.round(g / s), lo, hi) * s).view(t, k)


def kernel_forward(t: dict[str, torch.Tensor], x: torch.Tensor, shift: float = 0.0) -> torch.Tensor:
    """y [T, N_pad] of nunchaku's W4A4 linear for raw inputs x [T, K], in float64, from the packed tensors ``t``
    (qweight, wscales, bias, smooth, lora_down, lora_up). ``shift`` ≠ 0: an unsigned (shifted) layer."""
    n_pad, k_pad = t["qweight"].shape[0], t["qweight"].shape[1] * 2
    x = _pad_to(x.double(), 1, k_pad)[:, :k_pad]
    codes = unpack_codes(t["qweight"]).double()
    ws = unpack_lanes(t["wscales"], n_pad).double()                      # [N, K/64]
    w = codes * ws.repeat_interleave(64, dim=1)
    smooth = unpack_lanes(t["smooth"], k_pad).double().view(-1)
    xq = _act_quant((x + shift) / smooth, unsigned=bool(shift))
    y = xq @ w.T + unpack_lanes(t["bias"], n_pad).double().view(1, -1)
    if "lora_down" in t:
        down = unpack_fragments(t["lora_down"], down=True).double()      # [r, K]
        up = unpack_fragments(t["lora_up"], down=False).double()         # [N, r]
        y = y + (x @ down.T) @ up.T
    return y


def check_tree(out: Path, pixels: torch.Tensor) -> dict[str, dict]:
    """Both consumers on one output tree with ``nunchaku/`` and ``cache/``, per quantized layer:
    ``differs`` (tensors where DeepCompressor's converter disagrees with our file; the bias counts only beyond one
    16-bit ulp), ``bias_ulps`` (its largest bias difference in ulps) and ``kernel_rel_err`` (kernel model on the
    layer's real input, from one forward of ``pixels`` through the tree's nunchaku model, vs the layer's output)."""
    import json

    from safetensors import safe_open

    from sam2ptq_core.export.reader import load_quantized
    from sam2ptq_core.sam2.quantized_model import QuantLinear
    with safe_open(str(out / "nunchaku" / "hiera_blocks.safetensors"), "pt") as f:
        meta, t = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    dtype = getattr(torch, json.loads(meta["quantization_config"])["weight"]["scale_dtype"])
    shapes = json.loads(meta["shapes"])
    theirs = deepcompressor_convert(out / "cache", dtype)
    model = load_quantized(out, "nunchaku")
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def record(name):
        def hook(mod, inputs, output):
            seen[name] = (inputs[0].detach(), output.detach())
        return hook
    hooks = [m.register_forward_hook(record(n))
             for n, m in model.vision_encoder.backbone.named_modules() if isinstance(m, QuantLinear)]
    with torch.inference_mode():
        model.get_image_embeddings(pixels)
    for h in hooks:
        h.remove()
    res = {}
    for name, sh in shapes.items():
        ours = {k[len(name) + 1:]: v for k, v in t.items() if k.startswith(name + ".") and "." not in k[len(name) + 1:]}
        dc = theirs[name]
        differs = [k for k in ours if k != "bias" and not torch.equal(ours[k], dc[k])]
        gap = (ours["bias"].double() - dc["bias"].double()).abs()
        ulp = torch.finfo(dtype).eps * torch.maximum(ours["bias"].abs(), dc["bias"].abs()).double()
        ulps = float((gap / ulp.clamp_min(1e-30)).max())
        if ulps > 1:
            differs.append("bias")
        x, y = seen[name]
        x2, y2 = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1]).double()
        got = kernel_forward(ours, x2, float(sh.get("act_shift", 0.0)))[:, : sh["out"]]
        res[name] = {"differs": differs, "bias_ulps": ulps,
                     "kernel_rel_err": float((got - y2).norm() / y2.norm().clamp_min(1e-30))}
    return res
