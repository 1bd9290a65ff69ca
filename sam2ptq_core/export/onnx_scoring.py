"""What an exported encoder does on its runtime: fidelity against torch (float, the pipeline's fake-quant model,
the runtime form's eager twin), masks scored like the fake-quant model's, and latency against the float encoder on
the same runtime and precision (what a user would run otherwise) and against torch eager. The files
(``export_files``) depend on the recipe only; the measurements on the runtime, its version and the machine."""
from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from ..algorithms.metrics import sqnr_db
from ..sam2.loading import trunk
from .onnx_graph import activation_format, export_float, export_onnx
from .runtimes import float_precision, machine, open_runtime, runtime_version

__all__ = ["RuntimeSam2", "time_encoder", "export_files", "measure_runtime", "score_runtime"]

LEVELS = ("fpn0", "fpn1", "embedding")  # the report's names of high_res_feats_0, high_res_feats_1, image_embed


class RuntimeSam2(nn.Module):
    """The float Sam2Model with its image encoder run by a graph runtime (``runtimes.open_runtime``): prompt encoder
    and mask decoder stay in torch, so masks can be scored like the fake-quant model's."""

    def __init__(self, sam2: nn.Module, encoder):
        super().__init__()
        self.sam2, self.encoder = sam2, encoder

    def get_image_embeddings(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        outs = self.encoder(pixel_values.detach().float().cpu().numpy())
        return [torch.from_numpy(o).to(device=pixel_values.device, dtype=pixel_values.dtype) for o in outs]

    def forward(self, **kw):
        return self.sam2(**kw)


def time_encoder(fn, x, warmup: int = 2, runs: int = 5) -> float:
    """Median seconds of ``fn(x)`` over ``runs`` after ``warmup`` calls."""
    import statistics
    for _ in range(warmup):
        fn(x)
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn(x)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def _sqnr(ref, got) -> float:
    return sqnr_db(torch.as_tensor(ref), torch.as_tensor(got))


def _fidelity(run, fp_model, quant_model, twin, pixels) -> dict:
    """Mean SQNR per level: runtime vs float, vs fake quant, vs its eager twin; the models vs float."""
    pairs = ("vs_float", "vs_fake_quant", "vs_runtime_twin", "fake_quant_vs_float", "twin_vs_float")
    sq = {k: {lv: [] for lv in LEVELS} for k in pairs}
    with torch.inference_mode():
        for i in range(pixels.shape[0]):
            x = pixels[i:i + 1].float()
            got = run(x.numpy())
            ref, fq, tw = (m.get_image_embeddings(x) for m in (fp_model, quant_model, twin))
            for j, lv in enumerate(LEVELS):
                for k, (a, b) in zip(pairs, ((ref, got), (fq, got), (tw, got), (ref, fq), (ref, tw))):
                    sq[k][lv].append(_sqnr(a[j], b[j]))
    return {k: {lv: sum(v) / len(v) for lv, v in per.items()} for k, per in sq.items()}


def export_files(d: Path, fp_model: nn.Module, twin: nn.Module, size: int, metadata: dict | None = None) -> dict:
    """The SAM2 apps' pair (``onnx_interface``) at ``size``²: ``d/encoder.onnx`` traced from ``twin``
    (``onnx_graph.runtime_model``: the quantized model in its runtime form) and ``d/decoder.onnx``, the float
    prompt encoder + mask decoder of ``fp_model``; plus ``d/float.onnx``, the float encoder exported the same way
    (the latency baseline): what the files are, whatever runtime or machine runs them. ``metadata`` goes into
    each file's metadata_props, with ``component`` saying which file it is."""
    from .onnx_decoder import export_decoder
    meta = metadata or {}
    info = export_onnx(d / "encoder.onnx", twin, size, {**meta, "component": "encoder (quantized)"})
    export_float(d / "float.onnx", fp_model, size, {**meta, "component": "encoder (float32, latency baseline)",
                                                     "scheme": "float32", "activations": "float"})
    dec = export_decoder(d / "decoder.onnx", fp_model, size,
                         {**meta, "component": "decoder (float32 prompt encoder + mask decoder)"})
    fp32_bytes = sum(m.weight.numel() * 4 for k, m in trunk(twin).named_modules() if hasattr(m, "packed"))
    return {**info, "image_size": size, "float_bytes": (d / "float.onnx").stat().st_size,
            "decoder_bytes": dec["bytes"], "linear_weights_fp32_bytes": fp32_bytes,
            "activations": f"{activation_format(twin)}, ranges observed on the quantized model (static_ranges)"}


def measure_runtime(encoder: Path, float_file: Path, fp_model: nn.Module, quant_model: nn.Module, twin: nn.Module,
                    pixels: torch.Tensor, runtime: str, latency_runs: int, precision: str = "auto", progress=None,
                    cache=None) -> dict:
    """What the file ``encoder`` does on ``runtime`` on this machine: its outputs against torch on ``pixels``
    [n, 3, S, S] (normalised; float, the fake-quant model, its eager twin), and the encoder latency at batch 1
    (median of ``latency_runs`` after 2 warm-up runs) of ``float_file`` and ours on the runtime and of torch fp32
    eager. ``progress(done, total, what)`` is told each of its 4 steps."""
    step = progress or (lambda *a: None)
    step(0, 4, f"compile ({runtime})")
    run = open_runtime(encoder, runtime, precision=precision, cache=cache)
    step(1, 4, "fidelity")
    sq = _fidelity(run, fp_model, quant_model, twin, pixels)
    step(2, 4, f"compile the float model ({runtime})")
    run_fp = open_runtime(float_file, runtime, precision=precision, cache=cache)
    step(3, 4, "latency")
    x = pixels[:1].float()
    with torch.inference_mode():
        t_torch = time_encoder(fp_model.get_image_embeddings, x, runs=latency_runs)
    t_fp = time_encoder(run_fp, x.numpy(), runs=latency_runs)
    t_q = time_encoder(run, x.numpy(), runs=latency_runs)
    step(4, 4, "done")
    return {"runtime": runtime, "runtime_version": runtime_version(runtime), "machine": machine(),
            "precision": float_precision(runtime, precision), "precision_setting": precision,
            "images": int(pixels.shape[0]), "sqnr_db": sq, "latency_runs": latency_runs,
            "latency_s": {"float_runtime": t_fp, "quantized_runtime": t_q, "torch_fp32": t_torch},
            "speedup_vs_float_runtime": t_fp / t_q, "speedup_vs_torch_fp32": t_torch / t_q,
            "threads": torch.get_num_threads()}


def score_runtime(fp: nn.Module, path: Path, info: dict, items, size: int, per_side: int, cache=None) -> dict:
    """The real-kernel encoder (``path`` on ``info["runtime"]``) scored against float like the fake-quant model:
    encoder SQNR and mask agreement over ``items`` (evaluation items), plus the file's sizes (``info``: the file's
    record and ``measure_runtime``'s) and the measured latency and SQNR."""
    from ..sam2.evaluation import evaluate_images, summarize
    rt = RuntimeSam2(fp, open_runtime(path, info["runtime"], precision=info.get("precision_setting", "auto"),
                                      cache=cache))
    per_img, _ = evaluate_images(fp, rt, items, size, per_side, 0)
    s = summarize(per_img)
    return {"runtime": info["runtime"], "encoder": s["encoder"], "masks": s["masks"],
            **{k: info.get(k) for k in ("runtime_version", "machine", "precision", "latency_s",
                                        "speedup_vs_float_runtime", "speedup_vs_torch_fp32", "bytes", "float_bytes",
                                        "sqnr_db")}}
