"""Where an encoder's time goes on OpenVINO: its per-op profile (``PERF_COUNT``), summed by layer type and by the
precision each op ran in, and the speed-up bound that the share left in float ops implies (Amdahl).

For each file (ONNX, or OpenVINO IR such as NNCF's): compile on CPU (``--precision auto|f32``), run ``--runs``
inferences after one warm-up, take the median per op of the profile's ``real_time``. An op counts as integer when
its ``exec_type`` names an 8-bit (or 4-bit) kernel (``_I8``, ``_U8``, ``_u8``, ``_i8``, ``_u4``, ``_i4``). With
``--float FILE`` the bound is float-model time / (time this file spends outside integer ops): what the file would
take if its integer ops took no time at all.

    python benchmarks/runtime_profile.py FILE [FILE …] --float fp32.onnx [--size 1024] [--precision auto] [--json out]
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
_INT = re.compile(r"(_|\b)(i8|u8|i4|u4)(_|\b)", re.IGNORECASE)


def profile(path: Path, size: int, precision: str, runs: int) -> dict:
    import openvino as ov
    cfg = {"PERF_COUNT": "YES"}
    if precision == "f32":
        cfg["INFERENCE_PRECISION_HINT"] = "f32"
    compiled = ov.Core().compile_model(str(path), "CPU", cfg)
    req = compiled.create_infer_request()
    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    req.infer({0: x})
    per_op: dict[str, list[float]] = defaultdict(list)
    meta: dict[str, tuple[str, str]] = {}
    for _ in range(runs):
        req.infer({0: x})
        for p in req.profiling_info:
            if p.status != p.Status.EXECUTED:
                continue
            per_op[p.node_name].append(p.real_time.total_seconds())
            meta[p.node_name] = (p.node_type, p.exec_type)
    by_type: dict[str, float] = defaultdict(float)
    by_kind = {"integer": 0.0, "float": 0.0}
    for name, ts in per_op.items():
        node_type, exec_type = meta[name]
        t = statistics.median(ts)
        kind = "integer" if _INT.search(exec_type) else "float"
        by_type[f"{node_type} [{exec_type}] ({kind})"] += t
        by_kind[kind] += t
    total = sum(by_kind.values())
    top = sorted(by_type.items(), key=lambda kv: -kv[1])
    return {"file": path.name, "precision": precision, "total_s": total, "integer_s": by_kind["integer"],
            "float_s": by_kind["float"], "float_share": by_kind["float"] / total,
            "ops": [{"op": k, "s": v, "share": v / total} for k, v in top]}


def main() -> list[dict]:
    p = argparse.ArgumentParser()
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--float", type=Path, help="the float encoder's file: gives the Amdahl bound")
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--precision", default="auto", choices=["auto", "f32"])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    base = profile(args.float, args.size, args.precision, args.runs) if args.float else None
    out = [base] if base else []
    for f in args.files:
        r = profile(f, args.size, args.precision, args.runs)
        if base:
            r["speedup_profiled"] = base["total_s"] / r["total_s"]
            r["speedup_bound"] = base["total_s"] / r["float_s"]
        out.append(r)
    for r in out:
        extra = (f"  profiled speed-up {r['speedup_profiled']:.2f}×, bound {r['speedup_bound']:.2f}×"
                 if "speedup_bound" in r else "")
        print(f"{r['file']} ({r['precision']}): {r['total_s'] * 1e3:.0f} ms summed over ops, "
              f"{r['float_share']:.0%} in float ops{extra}")
        for o in r["ops"][:args.top]:
            print(f"    {o['s'] * 1e3:8.1f} ms {o['share']:5.1%}  {o['op']}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    sys.exit(main() and 0)
