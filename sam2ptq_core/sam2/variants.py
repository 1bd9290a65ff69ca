"""The published SAM2.1 Hiera variants (the one table that config validation, loading and the docs read), their hub
ids, the checks of a local checkpoint directory and where a checkpoint resolves to (``resolve_checkpoint``). No torch
import, so that validating a run, and a cached rerun's fetch_model key, stay fast.
"""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["VARIANTS", "VARIANT_NAMES", "GELU_INPUT_LAYERS", "shared_input_groups", "hub_id", "narrowest_linear",
           "linear_shapes", "ModelUnavailable", "check_checkpoint_dir", "resolve_checkpoint"]

# Published Hiera configurations of facebook/sam2.1-hiera-* .
VARIANTS: dict[str, dict] = {
    "tiny": dict(hidden_size=96, embed_dim_per_stage=[96, 192, 384, 768], num_attention_heads_per_stage=[1, 2, 4, 8],
                 blocks_per_stage=[1, 2, 7, 2], global_attention_blocks=[5, 7, 9], window_size_per_stage=[8, 4, 14, 7],
                 window_positional_embedding_background_size=[7, 7]),
    "small": dict(hidden_size=96, embed_dim_per_stage=[96, 192, 384, 768], num_attention_heads_per_stage=[1, 2, 4, 8],
                  blocks_per_stage=[1, 2, 11, 2], global_attention_blocks=[7, 10, 13],
                  window_size_per_stage=[8, 4, 14, 7], window_positional_embedding_background_size=[7, 7]),
    "base-plus": dict(hidden_size=112, embed_dim_per_stage=[112, 224, 448, 896],
                      num_attention_heads_per_stage=[2, 4, 8, 16], blocks_per_stage=[2, 3, 16, 3],
                      global_attention_blocks=[12, 16, 20], window_size_per_stage=[8, 4, 14, 7],
                      window_positional_embedding_background_size=[14, 14]),
    "large": dict(hidden_size=144, embed_dim_per_stage=[144, 288, 576, 1152],
                  num_attention_heads_per_stage=[2, 4, 8, 16], blocks_per_stage=[2, 6, 36, 4],
                  global_attention_blocks=[23, 33, 43], window_size_per_stage=[8, 4, 16, 8],
                  window_positional_embedding_background_size=[7, 7]),
}

VARIANT_NAMES = tuple(VARIANTS)

# The trunk linears that read a GELU output (the second layer of every Hiera MLP): SVDQuant's shifted layers.
GELU_INPUT_LAYERS = ("*.mlp.proj_out",)


def shared_input_groups(names) -> list[tuple[str, str]]:
    """Trunk linears that read the same tensor: in a stage-transition block the residual ``proj`` and
    ``attn.qkv`` both read the block's first LayerNorm output."""
    names = set(names)
    return [(f"{n[:-len('.proj')]}.attn.qkv", n) for n in sorted(names)
            if n.count(".") == 2 and n.endswith(".proj") and f"{n[:-len('.proj')]}.attn.qkv" in names]


def hub_id(name: str) -> str:
    return f"facebook/sam2.1-hiera-{name}"


def narrowest_linear(name: str, arch: dict | None = None) -> int:
    """min(in, out) over the trunk's quantized linears: the first stage's width (its attn.proj is width → width; every
    other linear is at least that wide on both sides)."""
    return min({**VARIANTS[name], **(arch or {})}["embed_dim_per_stage"])


def linear_shapes(name: str, arch: dict | None = None) -> dict[str, tuple[int, int]]:
    """{trunk linear: (in, out)} in the model's order, from the variant table alone (tests check it against the
    built model): per block attn.qkv, attn.proj, mlp.proj_in, mlp.proj_out (MLP ratio 4), and the residual ``proj``
    of each stage's first block after the first stage (dim_in → dim)."""
    a = {**VARIANTS[name], **(arch or {})}
    out, b, prev = {}, 0, a["embed_dim_per_stage"][0]
    for dim, blocks in zip(a["embed_dim_per_stage"], a["blocks_per_stage"]):
        for j in range(blocks):
            d_in = prev if j == 0 else dim
            out.update({f"blocks.{b}.attn.qkv": (d_in, 3 * dim), f"blocks.{b}.attn.proj": (dim, dim),
                        f"blocks.{b}.mlp.proj_in": (dim, 4 * dim), f"blocks.{b}.mlp.proj_out": (4 * dim, dim)})
            if d_in != dim:
                out[f"blocks.{b}.proj"] = (d_in, dim)
            b += 1
        prev = dim
    return out


class ModelUnavailable(RuntimeError):
    """The checkpoint cannot be found or read; the message says which and the ways out."""


def check_checkpoint_dir(path: str | Path) -> Path:
    p = Path(path)
    if not (p / "config.json").is_file():
        raise ModelUnavailable(f"model.path {p} is not a transformers SAM2 checkpoint (no config.json there); "
                               f"point --model.path at a directory saved with save_pretrained")
    return p


def resolve_checkpoint(name: str, path: str, revision: str) -> Path:
    """A local directory holding ``config.json`` + safetensors: ``path``, else the HF cache, else a download."""
    if path:
        return check_checkpoint_dir(path)
    from huggingface_hub import snapshot_download
    repo = hub_id(name)
    patterns = ["*.json", "*.safetensors"]
    try:
        return Path(snapshot_download(repo, revision=revision, allow_patterns=patterns, local_files_only=True))
    except Exception:
        pass
    why = "HF_HUB_OFFLINE is set"
    if os.environ.get("HF_HUB_OFFLINE", "0") in ("", "0", "false", "False"):
        try:
            return Path(snapshot_download(repo, revision=revision, allow_patterns=patterns))
        except Exception as e:  # network errors come in many types; all mean the same thing here
            why = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
    raise ModelUnavailable(
        f"cannot load {repo}@{revision}: not in the HF cache and the hub is unreachable ({why}). Ways out: "
        f"--model.path DIR (a local transformers checkpoint), pre-populate the HF cache "
        f"(hf download {repo} --revision {revision}), or model.random_init: true for offline testing")
