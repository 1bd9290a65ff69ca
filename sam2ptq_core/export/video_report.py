"""The report's "Video" section (``quant.eval.video``): a strip of frames with the float and the quantized
tracker's masks, the J&F curve over the frames per object, and the numbers: J&F (DAVIS: region J, boundary F)
of the quantized tracker against the float one, per-frame encoder time and the per-object part."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["write_video_files", "video_lines", "with_video"]
COLOURS = [(0.12, 0.56, 1.0), (1.0, 0.31, 0.16), (0.24, 0.78, 0.24), (0.94, 0.78, 0.0), (0.78, 0.24, 0.86)]


def _tinted(frame, masks: np.ndarray) -> np.ndarray:
    ov = np.asarray(frame.convert("RGB"), dtype=np.float32) / 255.0
    for k, m in enumerate(masks):
        ov[m] = 0.45 * ov[m] + 0.55 * np.array(COLOURS[k % len(COLOURS)])
    return ov


def plot_strip(strip: dict, path: Path, title: str) -> None:
    """Two rows (float, quantized) of the chosen frames with every object's mask tinted in."""
    n = len(strip["frames"])
    fig, axes = plt.subplots(2, n, figsize=(3.2 * n, 5.4), squeeze=False)
    for j, (im, idx) in enumerate(zip(strip["frames"], strip["index"])):
        for i, name in enumerate(("float", "quantized")):
            ax = axes[i][j]
            ax.imshow(_tinted(im, strip[name][j]))
            ax.set_title(f"{name}, frame {idx}", fontsize=8)
            ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_jf(metrics: dict, path: Path, title: str) -> None:
    """(J + F) / 2 of each object over the frames, quantized tracker against the float one."""
    fig, ax = plt.subplots(figsize=(7, 3.4))
    J, F = np.asarray(metrics["J"]), np.asarray(metrics["F"])
    for k in range(J.shape[1]):
        ax.plot(metrics["frames"], (J[:, k] + F[:, k]) / 2, marker="o", markersize=3, color=COLOURS[k % 5],
                label=f"object {k + 1}")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("frame")
    ax.set_ylabel("J&F, quantized vs float")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_video_files(d: Path, metrics: dict, strip: dict | None, title: str) -> None:
    """``video.json`` (``metrics``), and with it enabled the strip and the J&F curve."""
    (d / "video.json").write_text(json.dumps(metrics, indent=1, allow_nan=True))
    if metrics.get("enabled"):
        plot_strip(strip, d / "video_strip.png", f"Video: float (top) and quantized (bottom) tracker — {title}")
        plot_jf(metrics, d / "video_jf.png", f"J&F over the clip — {title}")


def video_lines(v: dict) -> list[str]:
    """The report's "Video" section."""
    n_obj = len(v["objects"])
    per = [f"object {k + 1} (`{s}`): J {j:.4f}, F {f:.4f}"
           for k, (s, j, f) in enumerate(zip(v["objects"], v["object_J"], v["object_F"]))]
    fl, q = v["float"], v["quantized"]
    return ["", "## Video (SAM2's video predictor, quantized encoder vs float)", "",
            f"`{v['clip']}` ({v['clip_size'][0]}×{v['clip_size'][1]}), frames {v['frames'][0]}–{v['frames'][-1]}, "
            f"{n_obj} object(s) prompted on frame {v['prompt_frame']}; forward tracking, memory modules "
            + ("seeded random (random weights)." if v["random_weights"] else "from the checkpoint."), "",
            f"**J&F {v['JF']:.4f}** (J {v['mean_J']:.4f}, F {v['mean_F']:.4f}) against the float tracker over the "
            f"frames after the prompt frame; "
            + "; ".join(per) + (f". {v['both_empty']} (frame, object) pairs had no object in either mask (scored 1)."
                                if v["both_empty"] else "."), "",
            "| tracker | encoder ms/frame | decoders + memory ms/frame (all objects) |", "|---|---|---|",
            f"| float | {1000 * fl['encoder_s']:.0f} | {1000 * fl['per_object_s']:.0f} |",
            f"| quantized (fake quant, torch) | {1000 * q['encoder_s']:.0f} | {1000 * q['per_object_s']:.0f} |", "",
            "![frames](video_strip.png)", "", "![J&F over the clip](video_jf.png)"]


def with_video(report: str, v: dict) -> str:
    """``report`` with the Video section before its mask overlays (the evaluate_video stage measured it)."""
    lines = report.rstrip("\n").split("\n")
    head = "## Mask overlays (float | quantized | disagreement)"
    i = lines.index(head) if head in lines else len(lines)
    return "\n".join([*lines[:i], *video_lines(v)[1:], "", *lines[i:]]) + "\n"
