"""The evaluation report: metrics.json, report.md, a per-layer error bar chart and FP-vs-quantized mask overlays."""
from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["RANDOM_BANNER", "write_report", "with_runtime", "plot_layer_errors", "plot_overlay", "plot_mask",
           "plot_agreement"]

RANDOM_BANNER = "RANDOM WEIGHTS — not a real SAM2 checkpoint"


def _fmt(v) -> str:
    if isinstance(v, float):
        return "inf" if math.isinf(v) else f"{v:.4g}"
    return str(v)


def plot_layer_errors(rows: list[dict], path: Path, title: str) -> None:
    names = [r["name"] for r in rows]
    out = [r["output_rel_err"] for r in rows]
    wgt = [r["weight_rel_err"] for r in rows]
    h = max(3.0, 0.22 * len(names) + 1.2)
    fig, ax = plt.subplots(figsize=(9, h))
    y = np.arange(len(names))
    ax.barh(y - 0.2, out, 0.4, label="output rel. error (calibration tokens, in-sample)", color="#d62728")
    ax.barh(y + 0.2, wgt, 0.4, label="weight rel. error", color="#1f77b4")
    ax.set_yticks(y, names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("relative error (lower is better)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_sensitivity(mixed: dict, path: Path, title: str) -> None:
    """Per layer (forward order): the image embedding's SQNR with that layer alone at the target precision;
    the layers that fall back are drawn in orange."""
    sens = mixed["sensitivity_db"]
    names, fb = list(sens), set(mixed["layers"])
    vals = [min(sens[n], 99.0) for n in names]  # an identical embedding gives +inf
    fig, ax = plt.subplots(figsize=(9, max(3.0, 0.22 * len(names) + 1.2)))
    y = np.arange(len(names))
    ax.barh(y, vals, 0.7, color=["#ff7f0e" if n in fb else "#1f77b4" for n in names])
    ax.set_yticks(y, names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"embedding SQNR (dB) with only this layer at W{mixed['target_bits']} (lower = more sensitive)")
    ax.set_title(f"{title}\norange: {len(fb)} layers fall back to {mixed['fallback']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_overlay(image: np.ndarray, fp_mask: np.ndarray, q_mask: np.ndarray, point: np.ndarray, iou: float,
                 path: Path, title: str) -> None:
    """Side by side: FP mask, quantized mask and their disagreement, over the image, with the prompt point."""
    fig, axes = plt.subplots(1, 3, figsize=(11, 4))
    panels = [("float", fp_mask, (0.1, 0.6, 1.0)), ("quantized", q_mask, (1.0, 0.5, 0.0)),
              (f"disagreement (IoU {iou:.3f})", fp_mask ^ q_mask, (1.0, 0.0, 0.3))]
    for ax, (name, m, col) in zip(axes, panels):
        ov = image.astype(np.float32) / 255.0
        ov[m] = 0.45 * ov[m] + 0.55 * np.array(col)
        ax.imshow(ov)
        ax.plot(point[0], point[1], marker="*", color="lime", markersize=14, markeredgecolor="black")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_agreement(sqnr: dict[str, float], ious: dict[str, list[float]], path: Path, title: str) -> None:
    """Left: encoder SQNR per level; right: histogram of quantized-vs-float mask IoU per prompt kind."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    names = list(sqnr)
    vals = [min(v, 99.0) for v in sqnr.values()]  # identical outputs (inf dB) drawn at 99
    a.bar(names, vals, color="#2ca02c")
    for i, v in enumerate(vals):
        a.text(i, v, f"{v:.1f}", ha="center", va="bottom", fontsize=8)
    a.set_ylabel("SQNR (dB, higher is better)")
    a.set_title("encoder: quantized vs float", fontsize=9)
    bins = np.linspace(0, 1, 21)
    for kind, v in ious.items():
        if v:
            b.hist(v, bins=bins, alpha=0.6, label=f"{kind} ({len(v)})")
    b.axvline(0.9, color="black", linestyle="--", linewidth=1)
    b.set_xlabel("mask IoU, quantized vs float (dashed: 0.9)")
    b.set_ylabel("prompts")
    b.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_mask(image: np.ndarray, mask: np.ndarray, points: np.ndarray, path: Path, title: str) -> None:
    """One mask over the image with its prompt points."""
    fig, ax = plt.subplots(figsize=(6, 6 * image.shape[0] / max(image.shape[1], 1) + 0.5))
    ov = image.astype(np.float32) / 255.0
    ov[mask] = 0.45 * ov[mask] + 0.55 * np.array((1.0, 0.5, 0.0))
    ax.imshow(ov)
    ax.plot(points[:, 0], points[:, 1], "*", color="lime", markersize=14, markeredgecolor="black")
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _branch_line(lr: dict | None) -> str:
    if not lr or not lr["rank"]:
        return "Low-rank branch: none (every quantized weight is in its low-bit format)."
    return (f"Low-rank branch: rank {lr['rank']}; {100 * lr['share_16bit']:.1f} % of the quantized layers' weight "
            f"bytes are held in 16-bit ({lr['branch_16bit_bytes'] / 2**20:.2f} MiB branch, "
            f"{lr['lowbit_weight_bytes'] / 2**20:.2f} MiB low-bit codes).")


def _runtime_lines(metrics: dict) -> list[str]:
    """The real-kernel encoder (onnx/sam2.1_hiera_<name>.encoder.onnx on a graph runtime) beside the float encoder
    on the same runtime and the fake-quant model."""
    r = metrics.get("runtime")
    if not r:
        return []
    lat = r["latency_s"]
    st = r["sqnr_db"]
    return ["", "## Real kernels (the ONNX encoder in onnx/)", "",
            f"On {r['runtime']} ({r.get('precision', 'f32')} float ops; int8 QDQ weights from the pipeline's codes, "
            "static per-tensor 8-bit activations observed on the quantized model): the quantized encoder runs "
            f"**{r['speedup_vs_float_runtime']:.2f}× as fast as the float encoder on the same runtime** "
            f"({1000 * lat['quantized_runtime']:.0f} vs {1000 * lat['float_runtime']:.0f} ms, batch 1), "
            f"{r['speedup_vs_torch_fp32']:.2f}× torch fp32 eager ({1000 * lat['torch_fp32']:.0f} ms); file "
            f"{r['bytes'] / 2**20:.1f} MiB (float {r['float_bytes'] / 2**20:.1f} MiB).", "",
            "| encoder | held-out: embedding SQNR dB vs float | held-out: mask mIoU vs float | calibration images: "
            "embedding SQNR dB vs float |", "|---|---|---|---|",
            f"| fake quant (pipeline) | {_fmt(metrics['encoder']['sqnr_db']['embedding'])} | "
            f"{_fmt(metrics['masks']['miou_vs_fp'])} | {_fmt(st['fake_quant_vs_float']['embedding'])} |",
            f"| the file's computation in torch (static activations) | — | — | "
            f"{_fmt(st['twin_vs_float']['embedding'])} |",
            f"| {r['runtime']} | {_fmt(r['encoder']['sqnr_db']['embedding'])} | {_fmt(r['masks']['miou_vs_fp'])} | "
            f"{_fmt(st['vs_float']['embedding'])} |", "",
            f"The runtime against the file's computation in torch (same formats; kernel rounding only): "
            f"{_fmt(st['vs_runtime_twin']['embedding'])} dB at the embedding (calibration images)."]


AGREEMENT = "![encoder SQNR and mask IoU histogram](agreement.png)"


def with_runtime(report: str, metrics: dict) -> str:
    """``report`` (``write_report``'s text) with the real-kernel section of ``metrics["runtime"]`` after the
    encoder fidelity; the runtime's row is measured by another stage than the rest of the report."""
    lines = report.split("\n")
    if AGREEMENT not in lines:
        raise ValueError("report.md has no encoder fidelity section to put the real-kernel section after")
    i = lines.index(AGREEMENT) + 1
    return "\n".join([*lines[:i], *_runtime_lines(metrics), *lines[i:]])


def _scheme_lines(schemes: list[dict] | None) -> list[str]:
    """The run's per-layer schemes (``scheme.json`` in the output tree has every layer's)."""
    if not schemes:
        return []
    return ["| layers | scheme (scheme.json lists every layer) | e.g. |", "|---|---|---|",
            *(f"| {r['layers']} | {r['scheme']} | {r['example']} |" for r in schemes), ""]


def write_report(out_dir: Path, metrics: dict, overlays: list[dict], ious: dict[str, list[float]]) -> None:
    """metrics.json, report.md and PNGs into ``out_dir``. The report's first line flags random weights.
    ``ious``: per prompt kind, the IoU of every prompt (for the histogram)."""
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1, allow_nan=True))
    banner = RANDOM_BANNER if metrics["random_weights"] else f"SAM2 {metrics['model']} — {metrics['source']}"
    title = f"{metrics['model']} {metrics['quant']}" + (" (random weights)" if metrics["random_weights"] else "")
    plot_layer_errors(metrics["layers"], out_dir / "layer_errors.png", f"Per-layer error — {title}")
    plot_agreement(metrics["encoder"]["sqnr_db"], ious, out_dir / "agreement.png", f"Agreement — {title}")
    lines = [banner, "", f"# SAM2 PTQ report: {title}", "",
             f"config hash `{metrics['config_hash'][:16]}`, {metrics['eval_images']} held-out images, "
             f"{metrics['masks']['num_prompts']} prompts, evaluated in {metrics.get('eval_dtype', 'float32')} on "
             f"{metrics.get('eval_device', 'cpu')}", "", _branch_line(metrics.get("low_rank")), "",
             *_scheme_lines(metrics.get("schemes")),
             "## Encoder fidelity (quantized vs float)", "", "| level | SQNR dB | cosine |", "|---|---|---|"]
    for lv, v in metrics["encoder"]["sqnr_db"].items():
        lines.append(f"| {lv} | {_fmt(v)} | {_fmt(metrics['encoder']['cosine'][lv])} |")
    mk = metrics["masks"]
    lines += ["", AGREEMENT, *_runtime_lines(metrics)]
    lines += ["", "## Mask agreement", "", "| prompts | mIoU vs float | IoU < 0.9 |", "|---|---|---|",
              f"| all ({mk['num_prompts']}) | {_fmt(mk['miou_vs_fp'])} | {_fmt(mk['frac_iou_below_0_9'])} |",
              *(f"| {k} ({mk[k]['num']}) | {_fmt(mk[k]['miou'])} | {_fmt(mk[k]['frac_below_0_9'])} |"
                for k in ("points", "boxes"))]
    if "gt" in metrics:
        lines += ["", "## Ground truth", "", f"mIoU float {_fmt(metrics['gt']['miou_fp'])}, "
                  f"quantized {_fmt(metrics['gt']['miou_quant'])} over {metrics['gt']['num']} annotations"]
    worst = sorted(metrics["layers"], key=lambda r: -r["output_rel_err"])[:5]
    lines += ["", "## Layers that hurt most", "",
              "Output error on the calibration token sample the choices were fitted on (in-sample).", "",
              "| layer | output rel. err | weight rel. err |", "|---|---|---|"]
    lines += [f"| {r['name']} | {_fmt(r['output_rel_err'])} | {_fmt(r['weight_rel_err'])} |" for r in worst]
    if metrics.get("gptq_fallbacks"):
        lines += ["", f"**GPTQ fell back to RTN on {len(metrics['gptq_fallbacks'])} layer(s)**: "
                  + ", ".join(metrics["gptq_fallbacks"])]
    lines += ["", "![per-layer error](layer_errors.png)"]
    if metrics.get("mixed"):
        mx = metrics["mixed"]
        plot_sensitivity(mx, out_dir / "sensitivity.png", f"Per-layer sensitivity — {title}")
        lines += ["", "## Mixed precision", "",
                  f"{len(mx['layers'])} of {len(mx['sensitivity_db'])} layers fall back to {mx['fallback']} "
                  f"(average {mx['avg_weight_bits']:.2f} weight bits instead of {mx['base_weight_bits']:.2f} at "
                  f"{mx['target_bits']}-bit codes; bits count codes, 16-bit scales and zero points and the 16-bit "
                  f"branch): "
                  + (", ".join(mx["layers"]) or "none") + ". The per-layer errors above show each layer as shipped "
                  "(fallbacks at their fallback precision).", "", "![per-layer sensitivity](sensitivity.png)"]
    lines += ["", "## Mask overlays (float | quantized | disagreement)", ""]
    for i, ov in enumerate(overlays):
        name = f"overlay_{i}.png"
        plot_overlay(ov["image"], ov["fp"], ov["q"], ov["point"], ov["iou"], out_dir / name, ov["title"])
        lines.append(f"![{ov['title']}]({name})")
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")
