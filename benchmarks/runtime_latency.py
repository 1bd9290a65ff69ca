"""Real kernels side by side: encoder latency at batch 1 (median of --runs after 2 warm-up runs), peak memory and
file size of the ONNX exports (sam2ptq_core/export/onnx_graph.py) on OpenVINO and ONNX Runtime, beside the float
encoder exported the same way on the same runtime and precision, NNCF INT8 (TRANSFORMER preset, on the same
calibration images; when nncf is installed: benchmark-only, `pip install nncf`) and torch eager, all in one run on
one machine. Each measurement runs in its own process (peak RSS is that process's).

Files built here are quantized the way the pipeline builds them, with plain rounding (RTN) instead of the full
recipe: random weights (offline), static sint8 activation ranges observed on the quantized model over the 7
calibration photos (the static_ranges stage's observer); fidelity is measured on 3 held-out photos.
Formats: W8A8 (sint8 per-channel weights: the fast path), W8A8+QK (also the attention matmul Q·Kᵀ with static sint8
query and key, `quant.ipts.attention`) and W4A8 (uint4 groups of 128, the demo's weight format).

Files the pipeline built (its full recipe: smoothing, GPTQ, static ranges observed on the calibrated model) join
the same run with ``--file NAME=PATH`` (an output tree's ``encoder.onnx``); ``--seed`` must then be the run's
``seed``, so that the float model is the one it quantized (random weights are seeded). ``--profile`` adds each
OpenVINO file's per-op profile (``benchmarks/runtime_profile.py``: share of time in float ops, Amdahl bound).

    python benchmarks/runtime_latency.py [--model tiny] [--size 1024] [--runs 5] [--seed 0] [--out DIR]
        [--file "W8A8 (full recipe)=outputs/sam2/…/encoder.onnx"] [--formats W8A8,W8A8+QK,W4A8]
        [--runtimes openvino,onnxruntime] [--profile]
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
IMAGES = ROOT / "examples" / "images"
# the bundled photos: 7 calibrate (NNCF, the RTN files' observers; --write-calib gives the pipeline the same 7),
# 3 are held out for fidelity
CALIB = ("astronaut.jpg", "brick.jpg", "camera.png", "clock.png", "coffee.jpg", "gravel.jpg", "hubble_deep_field.jpg")
HELD_OUT = ("chelsea.jpg", "retina.jpg", "rocket.jpg")

_TIMER = r"""
import json, sys, numpy as np, torch
sys.path.insert(0, {root!r})
from sam2ptq_core.export.onnx_scoring import time_encoder
from sam2ptq_core.export.runtimes import open_runtime
from sam2ptq_core.sam2.loading import build_random
kind, path, size, runs, precision = {kind!r}, {path!r}, {size}, {runs}, {precision!r}
x = torch.from_numpy(np.load({px!r}))
if kind in ("torch_fp32", "torch_bf16"):
    m = build_random({model!r}, {seed}, size).eval()
    if kind == "torch_bf16":
        m, x = m.to(torch.bfloat16), x.bfloat16()
    with torch.inference_mode():
        t = time_encoder(m.get_image_embeddings, x, runs=runs)
elif path.endswith(".xml"):  # NNCF's OpenVINO IR
    import openvino as ov
    cfg = {{"INFERENCE_PRECISION_HINT": "f32"}} if precision == "f32" else {{}}
    core = ov.Core()
    core.set_property({{"CACHE_DIR": {cache!r}}})
    c = core.compile_model(path, "CPU", cfg)
    req = c.create_infer_request()
    t = time_encoder(lambda a: req.infer({{0: a}}), x.numpy(), runs=runs)
else:
    t = time_encoder(open_runtime(path, kind, precision=precision), x.numpy(), runs=runs)
hwm = [ln for ln in open("/proc/self/status") if ln.startswith("VmHWM")][0].split()[1]  # this process's peak RSS
print(json.dumps({{"s": t, "peak_rss_mb": int(hwm) / 1024}}))
"""


def _time(kind: str, path: str, px: str, args, precision: str = "auto") -> dict:
    code = _TIMER.format(root=str(ROOT), kind=kind, path=path, size=args.size, runs=args.runs, px=px,
                         model=args.model, precision=precision, seed=args.seed,
                         cache=str(Path(px).parent / "ov_cache"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"timing {kind} {path} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _quantized(m, imgs, w_dtype: str, group: int, a_dtype: str, attention: bool = False):
    """(runtime-form model, fake-quant model): RTN codes, no smoothing or GELU shift, static sint8 ranges observed
    on ``imgs``; ``attention``: Q·Kᵀ's inputs too (sam2/attention.py, ``quant.ipts.attention``); ``a_dtype`` None:
    weights only (OpenVINO then quantizes the activations of its compressed-weight FullyConnected layers
    dynamically, per token and group of DYNAMIC_QUANTIZATION_GROUP_SIZE = 32 inputs by default)."""
    from sam2ptq_core.algorithms.quantizers import dequantize, quantize
    from sam2ptq_core.algorithms.scheme import LayerScheme
    from sam2ptq_core.export.onnx_graph import runtime_model
    from sam2ptq_core.sam2.attention import set_static
    from sam2ptq_core.sam2.loading import quantizable_linears
    from sam2ptq_core.sam2.quantized_model import LayerArtifacts, prepare_static, quant_linears, quantize_model
    sch = LayerScheme(w_dtype, group, a_dtype, -1)
    arts, saved = {}, {}
    for n, mod in quantizable_linears(m).items():
        q = quantize(mod.weight.detach(), w_dtype, group)
        saved[n] = {"codes": q.codes, "scale": q.qparams.scale, "group_size": torch.tensor(q.qparams.group_size),
                    "zero": q.qparams.zero if q.qparams.zero is not None else torch.empty(0)}
        arts[n] = LayerArtifacts(sch, dequantize(q), mod.bias.detach(), None, None, None)
    qm = quantize_model(copy.deepcopy(m), arts)
    if a_dtype is None:  # weights only: the runtime quantizes activations itself (OpenVINO: per group of 32)
        return runtime_model(qm, saved, {}), qm
    obs = prepare_static(qm, attention=attention)
    with torch.inference_mode():
        for x in imgs:
            qm.get_image_embeddings(x)
    qparams = {n: o.qparams("mse", sch.static8().a_dtype if n in arts else "sint8") for n, o in obs.items()}
    for ql in quant_linears(qm).values():
        ql.observer = None
    set_static(qm, {})  # observers off; the fake-quant model keeps float attention (as the dynamic pipeline)
    return runtime_model(qm, saved, qparams), qm


def _nncf(fp32: Path, imgs, out: Path) -> Path | None:
    """NNCF INT8 of the float ONNX file (TRANSFORMER preset) on the same calibration images, or None without nncf."""
    try:
        import nncf
    except ImportError:
        return None
    import openvino as ov
    q = nncf.quantize(ov.Core().read_model(str(fp32)), nncf.Dataset([x.numpy() for x in imgs]),
                      model_type=nncf.ModelType.TRANSFORMER, subset_size=len(imgs))
    ov.save_model(q, str(out))
    return out


def main() -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="tiny")
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--seed", type=int, default=0, help="the random weights' seed (a pipeline run's `seed`)")
    p.add_argument("--file", action="append", default=[], metavar="NAME=PATH",
                   help="an encoder.onnx the pipeline built, timed and scored beside the others")
    p.add_argument("--formats", default="W8A8,W8A8+QK,W4A8",
                   help="RTN files built here (comma-separated; '' for none; +QK: attention's Q·Kᵀ in int8 too)")
    p.add_argument("--runtimes", default="openvino,onnxruntime")
    p.add_argument("--profile", action="store_true", help="OpenVINO per-op profile of each file (Amdahl bound)")
    p.add_argument("--out", type=Path, help="keep the files and write results.json here")
    p.add_argument("--write-calib", type=Path, metavar="DIR",
                   help="only link the 7 calibration photos into DIR (a pipeline run's quant.calib.path) and the 3 "
                        "held-out ones into DIR_held (its quant.eval.path), then exit")
    args = p.parse_args()
    if args.write_calib:
        held = args.write_calib.with_name(args.write_calib.name + "_held")
        for d, names in ((args.write_calib, CALIB), (held, HELD_OUT)):
            d.mkdir(parents=True, exist_ok=True)
            for f in names:
                if not (d / f).exists():
                    (d / f).symlink_to((IMAGES / f).resolve())
        return {}
    import numpy as np

    from sam2ptq_core.algorithms.metrics import sqnr_db
    from sam2ptq_core.export.onnx_graph import export_float, export_onnx
    from sam2ptq_core.export.runtimes import open_runtime

    def _sqnr_db(a, b):
        return sqnr_db(torch.as_tensor(a), torch.as_tensor(b))
    from sam2ptq_core.sam2.images import load_rgb, normalize, resize_uint8
    from sam2ptq_core.sam2.loading import build_random
    m = build_random(args.model, args.seed, args.size).eval()
    def _img(f):
        return normalize(resize_uint8(load_rgb(IMAGES / f), args.size))[None]
    calib, held = [_img(f) for f in CALIB], [_img(f) for f in HELD_OUT]
    tmp = args.out or Path(tempfile.mkdtemp())
    tmp.mkdir(parents=True, exist_ok=True)
    px = str(tmp / "px.npy")
    np.save(px, held[0].numpy())
    res = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
           "model": args.model, "size": args.size, "runs": args.runs, "seed": args.seed,
           "weights": f"RANDOM WEIGHTS (seed {args.seed}); built here: RTN codes; --file: the pipeline's recipe",
           "rows": []}
    files = {"fp32": tmp / "fp32.onnx"}
    export_float(files["fp32"], m, args.size)
    twins = {}
    rtn = {"W8A8": ("sint8", -1, "sint8", False), "W4A8": ("uint4", 128, "uint8", False),
           "W8A8+QK": ("sint8", -1, "sint8", True),  # +QK: attention's Q·Kᵀ quantized too
           "W4A16": ("uint4", 128, None, False)}  # int4 weights only: OpenVINO's dynamic activation quantization
    for fmt, (w, g, a, qk) in {f"{k} RTN": rtn[k] for k in filter(None, args.formats.split(","))}.items():
        twins[fmt], _ = _quantized(m, calib, w, g, a, qk)
        files[fmt] = tmp / f"{fmt.replace(' ', '_')}.onnx"
        export_onnx(files[fmt], twins[fmt], args.size)
    for spec in args.file:
        name, _, path = spec.partition("=")
        files[name] = Path(path)
    nncf_file = _nncf(files["fp32"], calib, tmp / "nncf.xml")
    if nncf_file is not None:
        files["NNCF INT8"] = nncf_file
    def _stack(outs):  # per output (fpn0, fpn1, embedding): the held-out images concatenated
        return [torch.cat([torch.as_tensor(o[i]) for o in outs]) for i in range(3)]
    with torch.inference_mode():
        ref = _stack([m.get_image_embeddings(x) for x in held])
        fq = {k: _stack([t.get_image_embeddings(x) for x in held]) for k, t in twins.items()}
    for kind in ("torch_fp32", "torch_bf16"):
        res["rows"].append({"encoder": kind, **_time(kind, "", px, args)})
    for fmt, f in files.items():
        for rt, prec in (("openvino", "auto"), ("openvino", "f32"), ("onnxruntime", "auto")):
            if (f.suffix == ".xml" and rt != "openvino") or rt not in args.runtimes.split(","):
                continue
            name = f"{fmt} / {rt}" + (" (f32 float ops)" if prec == "f32" else "")
            size_mb = (f.stat().st_size + (f.with_suffix(".bin").stat().st_size if f.suffix == ".xml" else 0)) / 2**20
            row = {"encoder": name, "format": fmt, "runtime": rt, "precision": prec, "file_mb": size_mb,
                   **_time(rt, str(f), px, args, prec)}
            if f.suffix == ".xml":
                import openvino as ov
                core = ov.Core()
                core.set_property({"CACHE_DIR": str(tmp / "ov_cache")})
                c = core.compile_model(str(f), "CPU", {"INFERENCE_PRECISION_HINT": "f32"} if prec == "f32" else {})
                req = c.create_infer_request()

                def run(a, c=c, req=req):
                    r = req.infer({0: a})
                    return [r[o] for o in c.outputs]
            else:
                run = open_runtime(f, rt, precision=prec)
            got = _stack([run(x.numpy()) for x in held])
            row["embedding_sqnr_vs_float_db"] = _sqnr_db(ref[2], got[2])
            row["fpn0_sqnr_vs_float_db"] = _sqnr_db(ref[0], got[0])
            if fmt in fq:
                row["embedding_sqnr_vs_fake_quant_db"] = _sqnr_db(fq[fmt][2], got[2])
                row["fpn0_sqnr_vs_fake_quant_db"] = _sqnr_db(fq[fmt][0], got[0])
            res["rows"].append(row)
    if args.profile:
        from benchmarks.runtime_profile import profile
        base = profile(files["fp32"], args.size, "auto", 3)
        res["profiles"] = [{k: v for k, v in base.items() if k != "ops"} | {"name": "fp32"}]
        for name, f in files.items():
            if name != "fp32":
                r = profile(f, args.size, "auto", 3)
                res["profiles"].append({"name": name, "total_s": r["total_s"], "float_s": r["float_s"],
                                        "float_share": r["float_share"], "top_ops": r["ops"][:8],
                                        "speedup_profiled": base["total_s"] / r["total_s"],
                                        "speedup_bound": base["total_s"] / r["float_s"]})
    t32 = res["rows"][0]["s"]
    base = {(r["runtime"], r["precision"]): r["s"] for r in res["rows"] if r.get("format") == "fp32"}
    for r in res["rows"]:
        r["speedup_vs_torch_fp32"] = t32 / r["s"]
        if "runtime" in r:  # against the float encoder on the same runtime and precision
            r["speedup_vs_float_same_runtime"] = base[(r["runtime"], r["precision"])] / r["s"]
    print(json.dumps(res, indent=1))
    if args.out:
        (args.out / "results.json").write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
