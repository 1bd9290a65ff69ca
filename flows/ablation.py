"""Ablation: the same model, data and quantization dtypes with techniques switched on one at a time.

Every variant is a normal ``sam2_ptq`` run (so the capture stage is shared and reused); the table lands in
``<output.root>/<job>_ablation/ablation.md`` and ``ablation.json``.
"""
from __future__ import annotations

import json
from pathlib import Path

from prefect import flow

from sam2ptq_core.pipeline.config import load_config

from .ptq import sam2_ptq

ABLATION_STEPS = [
    ("RTN", ["quant.wgts.kernel_gptq=null", "quant.smooth=null", "quant.rotation=null", "quant.wgts.low_rank=null"]),
    ("GPTQ", ["quant.smooth=null", "quant.rotation=null", "quant.wgts.low_rank=null"]),
    ("GPTQ+smooth", ["quant.rotation=null", "quant.wgts.low_rank=null"]),
    ("GPTQ+smooth+rotation", ["quant.wgts.low_rank=null"]),
    ("GPTQ+smooth+rotation+low-rank", []),
    ("full+GELU shift", ["quant.ipts.gelu_shift=true"]),
    ("full+sequential", ["quant.calib.mode=sequential"]),
    ("full+GELU shift+sequential", ["quant.ipts.gelu_shift=true", "quant.calib.mode=sequential"]),
]
SIGNED_ONLY = "quant.ipts.gelu_shift=true"  # steps that need signed activations are skipped for uint configs


def _base_overrides(cfg: dict) -> list[str]:
    """Make sure every technique is present in the full variant (with the config's settings or defaults)."""
    q = cfg["quant"]
    out = []
    if q["wgts"].get("kernel_gptq") is None:
        out.append("quant.wgts.kernel_gptq={}")
    if q.get("smooth") is None:
        out.append("quant.smooth={}")
    if q.get("rotation") is None:
        out.append("quant.rotation={}")
    if q["wgts"].get("low_rank") is None:
        out.append("quant.wgts.low_rank={}")
    return out


@flow(name="sam2-ptq-ablation")
def run_ablation(config: dict | str = "", overrides: list[str] | None = None) -> str:
    base = load_config(config or None, overrides or [])
    cfg = load_config(base.model_dump(mode="json"), _base_overrides(base.model_dump(mode="json")))
    job = base.job_name()
    rows = []
    signed = (cfg.quant.ipts.dtype or "").startswith("s")
    for name, ovs in ABLATION_STEPS:
        if SIGNED_ONLY in ovs and not signed:
            continue
        tag = name.lower().replace("+", "_").replace("-", "").replace(" ", "")
        out = sam2_ptq(cfg.model_dump(mode="json"), ovs + [f"output.job={job}_abl_{tag}", "convert_nunchaku=false"])
        m = json.loads((Path(out) / "metrics.json").read_text())
        st = json.loads((Path(out) / "stages.json").read_text())
        lr = m["low_rank"]
        rows.append({"variant": name, "sqnr_embedding_db": m["encoder"]["sqnr_db"]["embedding"],
                     "sqnr_fpn0_db": m["encoder"]["sqnr_db"]["fpn0"], "miou_vs_fp": m["masks"]["miou_vs_fp"],
                     "frac_iou_below_0_9": m["masks"]["frac_iou_below_0_9"],
                     "mean_layer_output_err": sum(r["output_rel_err"] for r in m["layers"]) / len(m["layers"]),
                     "size_mib": (lr["lowbit_weight_bytes"] + lr["branch_16bit_bytes"]) / 2**20,
                     # seconds of the stages that calibrate (capture is shared by every variant)
                     "calib_s": sum(st[k]["seconds"] for k in ("smooth", "gptq_lowrank")),
                     "random_weights": m["random_weights"]})
    target = Path(cfg.output.root) / f"{job}_ablation"
    target.mkdir(parents=True, exist_ok=True)
    (target / "ablation.json").write_text(json.dumps(rows, indent=1))
    head = "RANDOM WEIGHTS — not a real SAM2 checkpoint\n\n" if rows[0]["random_weights"] else ""
    lines = [head + f"# Ablation: {cfg.model.name} W{cfg.quant.wgts.dtype}/A{cfg.quant.ipts.dtype}", "",
             "| variant | SQNR embedding dB | SQNR fpn0 dB | mIoU vs FP | IoU<0.9 | mean layer out err | "
             "quantized linears MiB | smooth+GPTQ s |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['sqnr_embedding_db']:.2f} | {r['sqnr_fpn0_db']:.2f} | {r['miou_vs_fp']:.4f} | "
              f"{r['frac_iou_below_0_9']:.3f} | {r['mean_layer_output_err']:.4f} | {r['size_mib']:.2f} | "
              f"{r['calib_s']:.1f} |" for r in rows]
    (target / "ablation.md").write_text("\n".join(lines) + "\n")
    return str(target)
