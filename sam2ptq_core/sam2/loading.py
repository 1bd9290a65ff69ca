"""Loading SAM2 (hub id + revision / local directory / HF cache / seeded random init) and the trunk's layer map.

Uses transformers' ``Sam2Model`` (≥ 5). The image encoder is ``model.vision_encoder`` (a ``Sam2VisionModel``):
``backbone`` is the Hiera trunk (quantized), ``neck`` the FPN (kept in 16-bit). Layer names are relative to the
trunk: ``blocks.<i>.attn.qkv``, ``blocks.<i>.attn.proj``, ``blocks.<i>.mlp.proj_in``, ``blocks.<i>.mlp.proj_out`` and
``blocks.<i>.proj`` (first block of a stage, width change).
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from .variants import VARIANTS, ModelUnavailable, check_checkpoint_dir, hub_id, resolve_checkpoint

__all__ = ["ModelUnavailable", "LoadedModel", "build_config", "build_random", "check_checkpoint_dir",
           "resolve_checkpoint", "load_model", "describe_model", "quantizable_linears", "trunk", "weights_sha256",
           "DTYPES"]

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass
class LoadedModel:
    model: nn.Module
    source: str           # "random_init", a local directory, or "<hub id>@<revision>"
    random_weights: bool


def _sized(cfg_dict: dict, image_size: int) -> dict:
    """Set the feature sizes that transformers' SAM2 derives from a 1024² input to ``image_size``."""
    s = image_size
    cfg_dict.setdefault("vision_config", {})["backbone_feature_sizes"] = [[s // 4, s // 4], [s // 8, s // 8],
                                                                         [s // 16, s // 16]]
    cfg_dict.setdefault("prompt_encoder_config", {})["image_size"] = s
    return cfg_dict


def build_config(name: str, image_size: int = 1024, arch: dict | None = None):
    """Sam2Config of a published variant (optionally with Hiera overrides for reduced test models)."""
    from transformers import Sam2Config
    backbone = {**VARIANTS[name], **(arch or {})}
    vision = {"backbone_config": {"model_type": "sam2_hiera_det_model", **backbone},
              "backbone_channel_list": list(backbone["embed_dim_per_stage"])[::-1]}
    return Sam2Config(**_sized({"vision_config": vision}, image_size))


def build_random(name: str, seed: int, image_size: int = 1024, arch: dict | None = None) -> nn.Module:
    """The exact architecture of ``name`` with seeded random weights (global RNG state is restored)."""
    from transformers import Sam2Model
    cfg = build_config(name, image_size, arch)
    with torch.random.fork_rng(devices=[]):  # seeds and restores the CPU generator only (CUDA's stay untouched)
        torch.default_generator.manual_seed(seed)
        model = Sam2Model(cfg)
        # transformers initialises pos_embed to zeros; give the random model a non-trivial one like a trained one
        for p in (model.vision_encoder.backbone.pos_embed, model.vision_encoder.backbone.pos_embed_window):
            nn.init.trunc_normal_(p, std=0.02)
    return model.eval()


def load_model(name: str, *, path: str = "", revision: str = "main", random_init: bool = False, seed: int = 0,
               image_size: int = 1024, arch: dict | None = None) -> LoadedModel:
    """Load Sam2Model in float32 on CPU. Never falls back to random weights: that must be asked for."""
    if random_init:
        return LoadedModel(build_random(name, seed, image_size, arch), "random_init", True)
    from transformers import Sam2Config, Sam2Model
    ckpt = resolve_checkpoint(name, path, revision)
    raw = json.loads((ckpt / "config.json").read_text())
    # hub repos hold model_type "sam2_video"; the image model needs only these three sub-configs
    sub = {k: raw[k] for k in ("vision_config", "prompt_encoder_config", "mask_decoder_config") if k in raw}
    if "vision_config" not in sub:
        raise ModelUnavailable(f"{ckpt}/config.json has no vision_config: not a SAM2 checkpoint")
    cfg = Sam2Config(**_sized(sub, image_size))
    try:
        model = Sam2Model.from_pretrained(str(ckpt), config=cfg, torch_dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise ModelUnavailable(f"cannot read the SAM2 weights in {ckpt}: {str(e).splitlines()[0]}") from None
    source = str(ckpt) if path else f"{hub_id(name)}@{revision}"
    return LoadedModel(model.eval(), source, False)


def trunk(model: nn.Module) -> nn.Module:
    """The Hiera trunk of a Sam2Model (or of a Sam2VisionModel)."""
    enc = getattr(model, "vision_encoder", model)
    return enc.backbone


@contextmanager
def separable_position_embedding(model: nn.Module, image_size: int):
    """Within the block, the trunk's position embedding at ``image_size`` is computed without a bicubic Resize:
    bicubic interpolation is linear and separable, so ``F.interpolate(P, (h, w))`` = Rᵀ·P·C with R [H, h] and
    C [W, w] the interpolation of the identity (F.interpolate itself, evaluated once), and a traced graph holds
    MatMuls instead of a Resize (the exporter folds Rᵀ·P, a [C, h, W] initializer: +0.65 MB at 1024²). Graph
    runtimes fold that subgraph at compile time with their reference kernels, and OpenVINO's bicubic Resize is slow
    there: 36.6 s to compile the 512² tiny encoder with it, 0.7 s without (130.8 vs 0.9 s at 1024²,
    benchmarks/openvino_compile.py). Storing the result instead would add C·h·w floats (25 MB at 1024²). Checked
    on entry against transformers' own ``_get_pos_embed``; not reentrant for one model."""
    import torch.nn.functional as F
    t = trunk(model)
    if "_get_pos_embed" in t.__dict__:
        raise RuntimeError("separable_position_embedding is already active on this model")
    p, win = t.pos_embed, t.pos_embed_window
    with torch.no_grad():
        hw = tuple(t.patch_embed(torch.zeros(1, 3, image_size, image_size, dtype=p.dtype)).shape[1:3])
        want = t._get_pos_embed(hw)

    def basis(n: int, size: int) -> torch.Tensor:  # [n, size]: row i = the interpolation of the i-th unit vector
        e = torch.eye(n, dtype=p.dtype)[:, None, :, None]
        return F.interpolate(e, size=(size, 1), mode="bicubic")[:, 0, :, 0]
    rows, cols = basis(p.shape[2], hw[0]), basis(p.shape[3], hw[1])

    def separable(at):
        if tuple(at) != hw:
            raise ValueError(f"the position embedding was set up for {hw} tokens, the graph has {tuple(at)}")
        pos = rows.T @ p[0] @ cols  # [C, h, w]
        pos = pos[None] + win.tile([1, 1, hw[0] // win.shape[2], hw[1] // win.shape[3]])
        return pos.permute(0, 2, 3, 1)  # transformers' layout: [1, h, w, C]
    with torch.no_grad():
        err = float((separable(hw) - want).abs().max() / want.abs().max().clamp_min(1e-30))
    if err > 1e-5:
        raise RuntimeError(f"the separable position embedding differs from transformers' by {err:.1e}: "
                           "transformers' Sam2HieraDetModel._get_pos_embed changed; update sam2/loading.py")
    t._get_pos_embed = separable  # an instance attribute shadows the method; removed on exit
    try:
        yield
    finally:
        del t._get_pos_embed


def quantizable_linears(model: nn.Module, skip: list[str] | tuple = ()) -> dict[str, nn.Module]:
    """Stable name → module of every quantized linear in the trunk, in forward order, minus ``skip`` patterns."""
    out = {}
    for name, mod in trunk(model).named_modules():
        if name.startswith("blocks.") and hasattr(mod, "in_features") and hasattr(mod, "out_features"):
            if not any(fnmatch.fnmatch(name, pat) for pat in skip):
                out[name] = mod
    return out


def weights_sha256(model: nn.Module) -> str:
    """sha256 over the state dict (names, shapes, bytes), to tie artifacts to the exact weights."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def describe_model(name: str, path: str, revision: str, random_init: bool, seed: int, image_size: int,
                   arch: dict | None) -> dict:
    """Load the model once and describe what was loaded: source, path, random or not, the weights' sha256 (which
    later stages check when they reload it) and the encoder's parameter count."""
    lm = load_model(name, path=path, revision=revision, random_init=random_init, seed=seed, image_size=image_size,
                    arch=arch)
    return {"name": name, "source": lm.source, "path": path, "random_weights": lm.random_weights,
            "weights_sha256": weights_sha256(lm.model),
            "num_params_encoder": sum(p.numel() for p in lm.model.vision_encoder.parameters())}
