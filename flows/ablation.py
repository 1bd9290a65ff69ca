"""Ablation: the same model, data and quantization dtypes with techniques switched on one at a time.

Every variant is a normal ``sam2_ptq`` run (so the capture stage is shared and reused); the table lands in
``<output.root>/<job>_ablation/ablation.md`` and ``ablation.json``.
"""
from __future__ import annotations

import json
from pathlib import Path

from prefect import flow

from sam2ptq_core.config import load_config

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
    # mixed precision at three budgets (average weight bits; the most sensitive layers fall back to W8A8)
    ("full+mixed 4.25 bits", ["quant.mixed={fallback: w8a8, budget_bits: 4.25}"]),
    ("full+mixed 4.5 bits", ["quant.mixed={fallback: w8a8, budget_bits: 4.5}"]),
    ("full+mixed 5 bits", ["quant.mixed={fallback: w8a8, budget_bits: 5.0}"]),
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


CALIB_STAGES = ("smooth", "gptq_lowrank", "sensitivity", "mixed")


def _build_seconds(cfg, stage: str, key: str) -> float:
    """How long the stage took when it was built (its manifest's timing), also when this run reused it."""
    from sam2ptq_core.pipeline.stages import open_artifact
    return float(open_artifact(cfg, {"stage": stage, "key": key}).manifest.data["timing"]["seconds"])


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
        rows.append({"variant": name, "sqnr_embedding_db": m["encoder"]["sqnr_db"]["embedding"],
                     "sqnr_fpn0_db": m["encoder"]["sqnr_db"]["fpn0"], "miou_vs_fp": m["masks"]["miou_vs_fp"],
                     "frac_iou_below_0_9": m["masks"]["frac_iou_below_0_9"],
                     "mean_layer_output_err": sum(r["output_rel_err"] for r in m["layers"]) / len(m["layers"]),
                     "size_mib": m["size"]["quantized_linears_bytes"] / 2**20,
                     # build seconds of the stages that calibrate, reused or not (capture is shared by all)
                     "calib_s": sum(_build_seconds(cfg, k, st[k]["key"]) for k in CALIB_STAGES),
                     "random_weights": m["random_weights"]})
    target = Path(cfg.output.root) / f"{job}_ablation"
    target.mkdir(parents=True, exist_ok=True)
    (target / "ablation.json").write_text(json.dumps(rows, indent=1))
    head = "RANDOM WEIGHTS — not a real SAM2 checkpoint\n\n" if rows[0]["random_weights"] else ""
    lines = [head + f"# Ablation: {cfg.model.name} W{cfg.quant.wgts.dtype}/A{cfg.quant.ipts.dtype}", "",
             "| variant | SQNR embedding dB | SQNR fpn0 dB | mIoU vs FP | IoU<0.9 | mean layer out err | "
             "quantized linears MiB | calibration s (smooth, GPTQ, sensitivity, mixed) |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['sqnr_embedding_db']:.2f} | {r['sqnr_fpn0_db']:.2f} | {r['miou_vs_fp']:.4f} | "
              f"{r['frac_iou_below_0_9']:.3f} | {r['mean_layer_output_err']:.4f} | {r['size_mib']:.2f} | "
              f"{r['calib_s']:.1f} |" for r in rows]
    _plot(rows, target / "ablation.png", head.strip())
    lines += ["", "![size vs fidelity per variant](ablation.png)"]
    (target / "ablation.md").write_text("\n".join(lines) + "\n")
    return str(target)


def _plot(rows: list[dict], path: Path, banner: str) -> None:
    """Quantized size against embedding SQNR and mask mIoU, one point per variant (the mixed budgets among them)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, col, label in ((axes[0], "sqnr_embedding_db", "embedding SQNR (dB)"),
                           (axes[1], "miou_vs_fp", "mask mIoU vs float")):
        for r in rows:
            ax.scatter(r["size_mib"], r[col], s=30, color="#ff7f0e" if "mixed" in r["variant"] else "#1f77b4")
            ax.annotate(r["variant"], (r["size_mib"], r[col]), fontsize=6, xytext=(3, 2), textcoords="offset points")
        ax.set_xlabel("quantized linears (MiB)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.margins(0.15)
    fig.suptitle(f"ablation: size vs fidelity (orange: mixed-precision budgets) {banner}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
