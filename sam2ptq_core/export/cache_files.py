"""DeepCompressor-style checkpoint files (shared/notes/nunchaku-format.md, "Checkpoint files") and their reader.

- ``model.pt``: the vision-encoder state dict (Sam2Model keys, ``vision_encoder.…``) after quantization; every
  quantized linear's ``weight`` is its fake-quantized residual, exactly (code − zero) · scale in float32. A layer
  whose input is shifted (SVDQuant's unsigned activations after GELU) is stored as DeepCompressor's
  ``ShiftedLinear`` stores it: its ``bias`` is b − shift·W·1 and ``<module>.shift`` (float32 [1]) sits beside it,
  which DeepCompressor's nunchaku converter reads (``split_shift`` takes these entries out before loading the state
  into a Sam2Model).
- ``scale.pt``: {"<module>.weight.scale.0": [out, 1, n_groups, 1], "<module>.weight.zero": same (uint only)}, float32.
- ``smooth.pt``: {module: float32 [in]} (only smoothed layers).
- ``branch.pt``: {module: {"a.weight": [r, in], "b.weight": [out, r]}} (only with a low-rank branch).
- ``rotation.json`` (ours; DeepCompressor has no online rotation file; the input of a listed module is rotated first,
  then divided by its smooth scale): {"random", "seed", "layers": [modules whose
  input is rotated by the Hadamard transform at run time]} (only when some layer is rotated).
Module names are full Sam2Model paths, e.g. ``vision_encoder.backbone.blocks.3.attn.qkv``. Saved with torch.save
and read back with ``torch.load(..., weights_only=True)``.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..algorithms.quantizers import expand_groups, num_groups

__all__ = ["PREFIX", "write_cache_files", "read_cache_files", "codes_from_weight", "split_shift"]

PREFIX = "vision_encoder.backbone."


def write_cache_files(d: Path, model_state: dict[str, torch.Tensor], qlayers: dict[str, dict], schemes: dict,
                      smooth: dict[str, torch.Tensor], rotation: dict | None = None,
                      whole_model: bool = False) -> list[str]:
    """Write the four files into ``d``; returns the names written. ``schemes``: {layer: LayerScheme} (a shifted
    layer's ``.shift`` entry comes from its scheme). ``model_state`` is the float Sam2Model's state
    dict; model.pt keeps its ``vision_encoder.*`` entries, or every entry with ``whole_model`` (--save-model), which
    makes the tree self-contained (the reader then needs no original checkpoint)."""
    d.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in model_state.items()
             if whole_model or k.startswith("vision_encoder.")}
    scales, branches = {}, {}
    for name, q in qlayers.items():
        full = PREFIX + name
        state[f"{full}.weight"] = q["weight"].float().clone()
        if q["bias"].numel():
            state[f"{full}.bias"] = q["bias"].float().clone()
        if schemes[name].shift:
            state[f"{full}.shift"] = torch.tensor([schemes[name].shift], dtype=torch.float32)
        out, ng = q["scale"].shape
        scales[f"{full}.weight.scale.0"] = q["scale"].float().reshape(out, 1, ng, 1).clone()
        if q["zero"].numel():
            scales[f"{full}.weight.zero"] = q["zero"].float().reshape(out, 1, ng, 1).clone()
        if q["a"].numel():
            branches[full] = {"a.weight": q["a"].float().clone(), "b.weight": q["b"].float().clone()}
    written = ["model.pt", "scale.pt"]
    torch.save(state, d / "model.pt")
    torch.save(scales, d / "scale.pt")
    if smooth:
        torch.save({PREFIX + k: v.float().clone() for k, v in smooth.items()}, d / "smooth.pt")
        written.append("smooth.pt")
    if branches:
        torch.save(branches, d / "branch.pt")
        written.append("branch.pt")
    if rotation and rotation.get("layers"):
        rot = {**rotation, "layers": [PREFIX + n for n in rotation["layers"]]}
        (d / "rotation.json").write_text(json.dumps(rot, indent=1))
        written.append("rotation.json")
    return written


def read_cache_files(d: Path) -> dict:
    """Load the files (weights_only) into {"state", "scale", "smooth", "branch", "rotation"}; absent files give {}."""
    def load(name):
        p = d / name
        return torch.load(p, weights_only=True) if p.is_file() else {}
    rot = json.loads((d / "rotation.json").read_text()) if (d / "rotation.json").is_file() else {}
    return {"state": load("model.pt"), "scale": load("scale.pt"), "smooth": load("smooth.pt"),
            "branch": load("branch.pt"), "rotation": rot}


def split_shift(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """(the state without its ``<module>.shift`` entries, {module: shift}); a shift entry is a float [1] beside a
    quantized linear's ``weight``."""
    shifts = {k[: -len(".shift")]: float(v.reshape(-1)[0]) for k, v in state.items()
              if k.endswith(".shift") and f"{k[: -len('.shift')]}.weight" in state}
    rest = {k: v for k, v in state.items() if not (k.endswith(".shift") and k[: -len(".shift")] in shifts)}
    return rest, shifts


def codes_from_weight(weight: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None,
                      group_size: int) -> torch.Tensor:
    """Integer codes round(W / scale) + zero per group (scale [out, 1, n_groups, 1], groups of ``group_size`` with
    a ragged last one, -1 = whole row); raises if W is off-grid."""
    out, k = weight.shape
    ng = scale.shape[2]
    g = k if group_size <= 0 or group_size >= k else group_size
    if num_groups(k, group_size) != ng:
        raise ValueError(f"scale has {ng} groups but width {k} with group size {group_size} needs "
                         f"{num_groups(k, group_size)}")
    s = expand_groups(scale.reshape(out, ng), g, k)
    c = torch.round(weight.float() / s)
    if not torch.equal(c * s, weight.float()):
        raise ValueError("stored weight is not exactly scale × integer; the file is not a quantized export")
    if zero is not None:
        c = c + expand_groups(zero.reshape(out, ng), g, k)
    return c.to(torch.int16)
