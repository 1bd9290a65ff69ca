"""OpenVINO's compile time of the encoder file, side by side: the file as exported (the trunk's position embedding's
bicubic interpolation as MatMuls by the interpolation matrices: ``sam2.loading.separable_position_embedding``)
and the same model traced with transformers' own bicubic Resize left in the graph (what the export did before
2026-12-03). Each compile runs without a model cache, in this process, after the ONNX files are written; the outputs
of the two files are compared on ONNX Runtime. RANDOM WEIGHTS (tiny, seed 0): compile time does not depend on the
weights' values.

    python benchmarks/openvino_compile.py [--sizes 512,1024] [--out benchmarks/results/openvino_compile_cpu.json]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main() -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="512,1024")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    import onnxruntime as ort
    import openvino as ov

    from sam2ptq_core.export import onnx_graph
    from sam2ptq_core.export.onnx_interface import ENCODER_INPUTS, ENCODER_OUTPUTS
    from sam2ptq_core.export.runtimes import machine
    from sam2ptq_core.sam2.loading import build_random
    res = {"machine": machine(), "openvino": ov.__version__, "date": time.strftime("%Y-%m-%d"),
           "weights": "RANDOM WEIGHTS (tiny, seed 0)", "rows": []}
    tmp = Path(tempfile.mkdtemp())
    for size in map(int, args.sizes.split(",")):
        m = build_random("tiny", 0, size).eval()
        files = {"separable MatMuls (the export)": tmp / f"const_{size}.onnx",
                 "bicubic Resize (before)": tmp / f"resize_{size}.onnx"}
        onnx_graph.export_float(files["separable MatMuls (the export)"], m, size)
        onnx_graph.export_module(files["bicubic Resize (before)"], onnx_graph._Encoder(m),
                                 (torch.zeros(1, 3, size, size),), ENCODER_INPUTS, ENCODER_OUTPUTS)
        x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
        outs = {}
        for name, f in files.items():
            t = time.perf_counter()
            ov.Core().compile_model(str(f), "CPU")
            s = time.perf_counter() - t
            outs[name] = ort.InferenceSession(str(f), providers=["CPUExecutionProvider"]).run(None, {"image": x})
            res["rows"].append({"size": size, "file": name, "compile_s": round(s, 2), "mb": f.stat().st_size / 2**20})
            print(f"{size}²  {name:32s} compile {s:7.1f} s  {f.stat().st_size / 2**20:6.1f} MB", flush=True)
        a, b = outs.values()
        res["rows"][-1]["max_abs_diff_vs_export"] = max(float(np.abs(u - v).max()) for u, v in zip(a, b))
        print(f"{size}²  outputs of the two files: max |Δ| {res['rows'][-1]['max_abs_diff_vs_export']:.2e}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
