"""The static_ranges stage's work: static per-tensor activation ranges observed on the quantized model itself
(prepare → calibrate → convert, as PT2E does): every QuantLinear with quantized activations records the tensor it
feeds its activation quantizer while calibration images run through the model at its dynamic per-token format;
each layer's 8-bit parameters (sint8, or uint8 on shifted inputs; zero point 0) are then chosen from what it saw
(``qdq.static_qparams``: MSE-best clipped range or min–max). ``quant.ipts.static`` runs the pipeline's evaluation
at these parameters; the ONNX export ships them."""
from __future__ import annotations

from dataclasses import replace

import torch

from ..config import RunConfig
from ..sam2.images import normalize
from ..sam2.quantized_model import build_quantized, prepare_static
from . import artifacts as A
from .stage_inputs import device_of, load_fp_model

__all__ = ["observe_ranges"]


def observe_ranges(c: RunConfig, fetched: A.FetchedModel, calib: A.CalibrationSet, smooth: A.SmoothingChoice,
                   gptq: A.QuantizedLayers, mixed: A.MixedChoice, progress=None) -> dict:
    """What ``ranges.json`` holds: per layer (and, with ``quant.ipts.attention``, per attention query and key:
    ``blocks.<i>.attn.query``) the observed [lo, hi], the format and the chosen scale (zero point 0)."""
    step = progress or (lambda *a: None)
    fp = load_fp_model(c, fetched)
    qlayers, schemes = A.shipped_layers(gptq, mixed)
    dynamic = {k: replace(s, a_static=False) for k, s in schemes.items()}  # observe at the per-token twin
    dev = device_of(c)
    qm = build_quantized(fp.model, qlayers, smooth.scales(), smooth.rotation_choice(), dynamic).float().to(dev)
    observers = prepare_static(qm, c.seed, attention=c.quant.ipts.attention)
    images = calib.images()[:c.quant.ipts.static_images]
    with torch.inference_mode():
        for i in range(images.shape[0]):
            qm.get_image_embeddings(normalize(images[i:i + 1]).to(dev))
            step(i + 1, images.shape[0], "image")
    method = c.quant.ipts.static_method
    layers = {}
    for k, ob in observers.items():
        dtype = schemes[k].static8().a_dtype if k in schemes else "sint8"  # attention's query and key: sint8
        qp = ob.qparams(method, dtype)
        layers[k] = {"lo": ob.lo, "hi": ob.hi, "dtype": dtype, "scale": float(qp.scale),
                     "zero": 0 if qp.zero is None else int(qp.zero)}
    return {"enabled": True, "dtype": "per tensor, zero point 0: sint8, uint8 on shifted inputs", "method": method,
            "images": int(images.shape[0]), "attention": c.quant.ipts.attention, "layers": layers}
