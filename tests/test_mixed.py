"""Mixed precision from measured sensitivity: the policy, monotone budgets, and the exports of fallback layers."""
import json

import pytest
import torch

from sam2ptq_core.algorithms.mixed_precision import average_bits, choose_fallback, fallback_order
from tests.helpers import REDUCED_CFG


def test_policy_is_a_nested_prefix_by_loss_per_parameter():
    loss = {"a": 1.0, "b": 0.5, "c": 0.9, "d": 0.01}
    params = {"a": 100, "b": 10, "c": 1000, "d": 10}
    assert fallback_order(loss, params) == ["b", "a", "d", "c"]  # 0.05, 0.01, 0.001, 0.0009 per parameter
    assert average_bits(params, {"b"}, 4, 8) == pytest.approx(4 + 4 * 10 / 1120)
    sets = [choose_fallback(loss, params, 4, 8, budget_bits=b) for b in (4.0, 4.05, 4.4, 5.0, 8.0)]
    assert sets == [[], ["b"], ["b", "a"], ["b", "a", "d"], ["b", "a", "d", "c"]]
    for small, big in zip(sets, sets[1:]):
        assert set(small) <= set(big)
    assert choose_fallback(loss, params, 4, 16, num_layers=2) == ["b", "a"]


def _run(tmp, *overrides):
    from pathlib import Path

    from flows.ptq import sam2_ptq
    return Path(sam2_ptq(str(REDUCED_CFG), [f"cache.root={tmp / 'cache'}", f"output.root={tmp / 'out'}",
                                            *overrides]))


def _calib_sqnr(out) -> float:
    """Embedding SQNR of the run's quantized model on its own calibration images."""
    from sam2ptq_core.algorithms.metrics import sqnr_db
    from sam2ptq_core.pipeline.artifacts import final_qlayers
    from sam2ptq_core.pipeline.config import group_size_of, load_config
    from sam2ptq_core.pipeline.runtime import load_fp_model
    from sam2ptq_core.pipeline.stages import open_artifact
    from sam2ptq_core.sam2.images import normalize
    from sam2ptq_core.sam2.quantized_model import build_quantized
    cfg = load_config(out / "config.yaml")
    st = json.loads((out / "stages.json").read_text())
    art = {k: open_artifact(cfg, {"stage": k, "key": v["key"]}) for k, v in st.items() if k != "export"}
    fp = load_fp_model(cfg, art["fetch_model"]).model
    sm, ip = art["smooth"], cfg.quant.ipts
    qm = build_quantized(fp, final_qlayers(art["gptq_lowrank"], art["mixed"]), sm.scales(), sm.rotation_choice(),
                         ip.dtype, group_size_of(ip.group_shapes))
    px = normalize(art["build_calibration_set"].images())
    with torch.inference_mode():
        return sqnr_db(fp.get_image_embeddings(px)[-1], qm.get_image_embeddings(px)[-1])


@pytest.mark.slow
def test_larger_budgets_never_lower_the_calibration_sqnr(prefect_server, tmp_path):
    """Measured on the reduced model (random weights): 15.1 → 20.0 → 20.6 → 22.5 → 24.6 dB for budgets
    none, 4.25, 4.5, 5, 6 average bits (w8a8 fallback); sensitivity was measured once and reused."""
    got = [(0.0, _calib_sqnr(_run(tmp_path, "output.job=b0")))]
    for b in (4.25, 4.5, 5.0, 6.0):
        out = _run(tmp_path, f"output.job=b{b}", f"quant.mixed={{fallback: w8a8, budget_bits: {b}}}")
        st = json.loads((out / "stages.json").read_text())
        assert st["sensitivity"]["reused"] == (b != 4.25)
        got.append((b, _calib_sqnr(out)))
    print("budget → calibration embedding SQNR:", [(b, round(s, 2)) for b, s in got])
    for (_, lo), (_, hi) in zip(got, got[1:]):
        assert hi >= lo, got
    assert got[-1][1] > got[0][1] + 3  # the fallbacks matter


@pytest.mark.slow
def test_fallback_layers_in_both_exports(prefect_server, tmp_path):
    from safetensors import safe_open

    from sam2ptq_core.export.reader import load_quantized
    from sam2ptq_core.pipeline.config import load_config
    x = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    # w8a8 fallback: the cache files carry them as per-channel int8 layers with int8 activations
    out = _run(tmp_path, "output.job=w8", "quant.mixed={fallback: w8a8, num_layers: 4}")
    cfg = load_config(out / "config.yaml")
    assert len(cfg.quant.mixed.layers) == 4 and cfg.quant.mixed.num_layers is None  # the choice, recorded
    m = json.loads((out / "metrics.json").read_text())
    assert m["mixed"]["layers"] == cfg.quant.mixed.layers and "Mixed precision" in (out / "report.md").read_text()
    assert (out / "sensitivity.png").stat().st_size > 10_000
    # the per-layer table shows the fallbacks as shipped (W8A8), with less error than at W4
    from sam2ptq_core.pipeline.stages import open_artifact
    st = json.loads((out / "stages.json").read_text())
    w4 = {r["name"]: r for r in open_artifact(cfg, {"stage": "gptq_lowrank", "key": st["gptq_lowrank"]["key"]})
          .layer_report()["layers"]}
    rows = {r["name"]: r for r in m["layers"]}
    assert all(rows[k]["output_rel_err"] < 0.5 * w4[k]["output_rel_err"] for k in cfg.quant.mixed.layers)
    assert all(rows[k] == w4[k] for k in rows if k not in cfg.quant.mixed.layers)
    model = load_quantized(out, "cache")
    fb = {n: mod for n, mod in model.vision_encoder.backbone.named_modules() if n in cfg.quant.mixed.layers}
    assert all(mod.a_dtype == "sint8" for mod in fb.values()) and len(fb) == 4
    # fp16 fallback with the nunchaku export: those layers go to unquantized_layers.safetensors, as metadata says
    out = _run(tmp_path, "output.job=nk", "quant.mixed={fallback: fp16, num_layers: 3}", "quant.rotation=null",
               "quant.wgts.scale_dtype=float16", "convert_nunchaku=true")
    layers = load_config(out / "config.yaml").quant.mixed.layers
    with safe_open(str(out / "nunchaku" / "unquantized_layers.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["fallback_layers"]) == sorted(layers)
        assert all(f"vision_encoder.backbone.{n}.weight" in f.keys() for n in layers)
    with safe_open(str(out / "nunchaku" / "hiera_blocks.safetensors"), "pt") as f:
        assert not any(k.startswith(tuple(f"{n}." for n in layers)) for k in f.keys())
    with torch.inference_mode():
        a = load_quantized(out, "cache").get_image_embeddings(x)
        b = load_quantized(out, "nunchaku").get_image_embeddings(x)
    assert all(torch.equal(u, v) for u, v in zip(a, b))  # both formats rebuild the same model
    mt = json.loads((out / "metrics.json").read_text())
    assert mt["size"]["fallback_16bit_bytes"] > 0
