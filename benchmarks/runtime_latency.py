"""Real kernels against torch: encoder latency at batch 1 (median of --runs after 2 warm-up runs), peak memory and
file size of the ONNX exports (sam2ptq_core/export/onnx.py) on OpenVINO and ONNX Runtime, beside torch fp32 and
bf16 eager, all in one run on one machine. Each measurement runs in its own process (peak RSS is that process's).

The quantized models are built the way the pipeline builds them, with plain rounding (RTN) instead of the full
recipe (speed does not depend on the values): random weights (offline), static activation ranges captured on two
bundled photos, fidelity measured on a third. Formats: W8A8 (sint8 per-channel weights, static int8 activations:
the fast path) and W4A8 (uint4 groups of 128, the demo's weight format, for size), plus the float encoder as ONNX.

    python benchmarks/runtime_latency.py [--model tiny] [--size 1024] [--runs 5]
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

_TIMER = r"""
import json, sys, numpy as np, torch
sys.path.insert(0, {root!r})
from sam2ptq_core.export.onnx import open_runtime, time_encoder
from sam2ptq_core.sam2.loading import build_random
kind, path, size, runs, precision = {kind!r}, {path!r}, {size}, {runs}, {precision!r}
x = torch.from_numpy(np.load({px!r}))
if kind in ("torch_fp32", "torch_bf16"):
    m = build_random({model!r}, 0, size).eval()
    if kind == "torch_bf16":
        m, x = m.to(torch.bfloat16), x.bfloat16()
    with torch.inference_mode():
        t = time_encoder(m.get_image_embeddings, x, runs=runs)
else:
    t = time_encoder(open_runtime(path, kind, precision=precision), x.numpy(), runs=runs)
hwm = [ln for ln in open("/proc/self/status") if ln.startswith("VmHWM")][0].split()[1]  # this process's peak RSS
print(json.dumps({{"s": t, "peak_rss_mb": int(hwm) / 1024}}))
"""


def _time(kind: str, path: str, px: str, args, precision: str = "auto") -> dict:
    code = _TIMER.format(root=str(ROOT), kind=kind, path=path, size=args.size, runs=args.runs, px=px,
                         model=args.model, precision=precision)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _quantized(m, stats, w_dtype: str, group: int, a_dtype: str):
    """(static-activation model, saved layers, schemes): RTN codes, the runtime's scheme per layer."""
    from sam2ptq_core.algorithms.quantizers import dequantize, quantize
    from sam2ptq_core.algorithms.scheme import LayerScheme
    from sam2ptq_core.export.onnx import activation_ranges, static_twin
    from sam2ptq_core.sam2.loading import quantizable_linears
    from sam2ptq_core.sam2.quantized_model import LayerArtifacts, quantize_model
    sch = LayerScheme(w_dtype, group, a_dtype, -1)
    arts, saved = {}, {}
    for n, mod in quantizable_linears(m).items():
        q = quantize(mod.weight.detach(), w_dtype, group)
        saved[n] = {"codes": q.codes, "scale": q.qparams.scale, "group_size": torch.tensor(q.qparams.group_size),
                    "zero": q.qparams.zero if q.qparams.zero is not None else torch.empty(0)}
        arts[n] = LayerArtifacts(sch, dequantize(q), mod.bias.detach(), None, None, None)
    qm = quantize_model(copy.deepcopy(m), arts)
    return static_twin(qm, activation_ranges(stats, qm)), saved, dict.fromkeys(saved, sch.static8())


def main() -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="tiny")
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()
    import numpy as np

    from sam2ptq_core.export.onnx import _sqnr_db, export_onnx, open_runtime
    from sam2ptq_core.sam2.capture import capture_stats
    from sam2ptq_core.sam2.images import load_rgb, normalize, resize_uint8
    from sam2ptq_core.sam2.loading import build_random
    m = build_random(args.model, 0, args.size).eval()
    imgs = [normalize(resize_uint8(load_rgb(ROOT / "examples/images" / f), args.size))[None]
            for f in ("coffee.jpg", "astronaut.jpg", "chelsea.jpg")]
    stats = capture_stats(m, imgs[:2], 4096, 0)
    tmp = Path(tempfile.mkdtemp())
    px = str(tmp / "px.npy")
    np.save(px, imgs[2].numpy())
    res = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
           "model": args.model, "size": args.size, "runs": args.runs, "weights": "random (RTN codes)",
           "rows": []}
    files = {"fp32": tmp / "fp32.onnx"}
    import onnx
    with torch.no_grad():  # the float encoder as ONNX, weights inside the file (as export_onnx writes them)
        prog = torch.onnx.export(_Enc(m), (imgs[2],), dynamo=True, opset_version=21, verbose=False,
                                 input_names=["pixel_values"], output_names=["fpn0", "fpn1", "embedding"])
    onnx.save_model(prog.model_proto, str(files["fp32"]))
    twins = {}
    for fmt, (w, g, a) in {"W8A8": ("sint8", -1, "sint8"), "W4A8": ("uint4", 128, "uint8")}.items():
        twin, saved, schemes = _quantized(m, stats, w, g, a)
        files[fmt] = tmp / f"{fmt}.onnx"
        export_onnx(files[fmt], twin, saved, schemes, args.size)
        twins[fmt] = twin
    with torch.inference_mode():
        ref = m.get_image_embeddings(imgs[2])
        fq = {k: t.get_image_embeddings(imgs[2]) for k, t in twins.items()}
    for kind in ("torch_fp32", "torch_bf16"):
        res["rows"].append({"encoder": kind, **_time(kind, "", px, args)})
    for fmt, f in files.items():
        for rt, prec in (("openvino", "auto"), ("openvino", "f32"), ("onnxruntime", "auto")):
            name = f"{fmt} onnx / {rt}" + (" (f32 float ops)" if prec == "f32" else "")
            row = {"encoder": name, "file_mb": f.stat().st_size / 2**20, **_time(rt, str(f), px, args, prec)}
            got = open_runtime(f, rt, precision=prec)(imgs[2].numpy())
            row["embedding_sqnr_vs_float_db"] = _sqnr_db(ref[2], got[2])
            if fmt in fq:
                row["embedding_sqnr_vs_fake_quant_db"] = _sqnr_db(fq[fmt][2], got[2])
                row["fpn0_sqnr_vs_fake_quant_db"] = _sqnr_db(fq[fmt][0], got[0])
            res["rows"].append(row)
    t32 = res["rows"][0]["s"]
    for r in res["rows"]:
        r["speedup_vs_fp32"] = t32 / r["s"]
    print(json.dumps(res, indent=1))
    return res


class _Enc(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return tuple(self.m.get_image_embeddings(x))


if __name__ == "__main__":
    main()
