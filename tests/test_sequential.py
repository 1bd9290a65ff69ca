"""Sequential calibration: block i's statistics are those of running the already quantized blocks < i directly;
a run killed inside the block loop resumes at the block it was in; evaluation edits reuse everything."""
import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sam2ptq_core.algorithms.layer_recipe import LayerSpec
from sam2ptq_core.algorithms.model_recipe import quantize_block
from sam2ptq_core.sam2.capture import capture_stats
from sam2ptq_core.sam2.images import normalize
from sam2ptq_core.sam2.loading import build_random, quantizable_linears, trunk
from sam2ptq_core.sam2.quantized_model import artifacts_from_saved, quantize_model
from sam2ptq_core.sam2.sequential import SequentialCalibrator
from tests.helpers import ARCH, REDUCED_CFG, ROOT, digest_tree, scheme_of

SPEC = LayerSpec(w_dtype="sint4", w_group=-1, a_dtype="sint4", a_group=-1, rank=4, gptq=True, block_size=16, seed=3)
NO_ROT = {"random": False, "seed": 0}


def test_block_stats_equal_the_quantized_prefix_run_directly(tmp_path):
    """float64 throughout. Reference: a fresh copy of the float model with blocks < i swapped for the recorded
    quantized blocks, run whole through capture_stats. Measured: Σ XᵀX relative error 0 (bitwise) for every block,
    samples and maxima equal; tolerance 1e-12."""
    model = build_random("tiny", 7, 128, ARCH).double()
    fp = copy.deepcopy(model)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (3, 3, 128, 128), generator=g, dtype=torch.uint8)

    def pixels():
        return (normalize(images[i:i + 1]).double() for i in range(3))
    cal = SequentialCalibrator(model, pixels, tmp_path / "h", 64, 7, (),
                               dict.fromkeys(quantizable_linears(model), scheme_of(SPEC)))
    oneshot = capture_stats(fp, pixels(), 64, 7)
    done: dict[str, dict] = {"qlayers": {}, "smooth": {}}
    worst = 0.0
    for i in range(len(trunk(model).blocks)):
        st = cal.stats(i)
        ref_model = copy.deepcopy(fp)
        if done["qlayers"]:
            quantize_model(ref_model, artifacts_from_saved(done["qlayers"], done["smooth"], NO_ROT,
                                                           dict.fromkeys(done["qlayers"], scheme_of(SPEC))))
        ref = capture_stats(ref_model, pixels(), 64, 7)
        for name, s in st.items():
            r = ref[name]
            err = float((s.hessian_sum - r.hessian_sum).norm() / r.hessian_sum.norm())
            worst = max(worst, err)
            assert err <= 1e-12, (name, err)
            assert s.n_tokens == r.n_tokens and torch.equal(s.absmax, r.absmax) and torch.equal(s.sample, r.sample)
            if i == 0:  # nothing quantized before block 0: the one-shot statistics
                assert torch.equal(s.hessian_sum, oneshot[name].hessian_sum)
            else:  # later blocks see quantized inputs: not the one-shot statistics
                assert not torch.allclose(s.hessian_sum, oneshot[name].hessian_sum, rtol=1e-6)
        layers = {k: v for k, v in quantizable_linears(model).items() if k.split(".")[1] == str(i)}
        r = quantize_block(layers, st, {k: None for k in layers}, SPEC, [(0.5, 0.5)], True, False, "cpu")
        cal.quantized(i, r["qlayers"], r["smooth"], {**NO_ROT, "layers": []})
        done["qlayers"].update(r["qlayers"])
        done["smooth"].update(r["smooth"])
    print(f"worst relative Σ XᵀX error over all blocks: {worst:.1e}")


def _cli(tmp_path, cache, out, *extra):
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL", None)
    return subprocess.Popen([sys.executable, str(ROOT / "quantize_sam2.py"), "--config", str(REDUCED_CFG),
                             "--quant.calib.mode", "sequential", "--quant.calib.image_size", "256",
                             "--quant.calib.num_samples", "6", "--cache.root", str(cache), "--output.root", str(out),
                             *extra], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def _blocks(cache):
    d = cache / "seq_block"
    return {p.parent.name: p.stat().st_mtime_ns for p in d.glob("*/manifest.json")} if d.is_dir() else {}


@pytest.mark.slow
def test_killed_in_the_block_loop_resumes_at_that_block(tmp_path):
    cache = tmp_path / "cache"
    p = _cli(tmp_path, cache, tmp_path / "o1")
    t = time.time()
    while time.time() - t < 300 and len(_blocks(cache)) < 2 and p.poll() is None:
        time.sleep(0.01)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    before = _blocks(cache)
    assert 2 <= len(before) < 5
    assert not list((cache / "smooth").glob("*/manifest.json"))  # the block loop was not finished
    left = list((cache / "tmp").glob(".sequential.tmp-*"))
    assert len(left) == 1 and any(left[0].rglob("*.pt"))  # the killed run's hidden states
    p = _cli(tmp_path, cache, tmp_path / "o1")
    out = p.communicate(timeout=600)[0]
    assert p.returncode == 0, out[-3000:]
    assert not list((cache / "tmp").iterdir())  # the resume swept them (main kept them: GBs for large)
    after = _blocks(cache)
    assert len(after) == 5 and all(after[k] == v for k, v in before.items())  # finished blocks were reused
    log = (max((cache / "logs").glob("*.log"), key=lambda f: f.stat().st_mtime)).read_text()
    assert log.count("reused seq_block") == len(before) and log.count("built seq_block") == 5 - len(before)
    # the same result as a run that was never interrupted
    p = _cli(tmp_path, tmp_path / "cache2", tmp_path / "o2")
    assert p.wait(600) == 0
    assert digest_tree(tmp_path / "o1" / "reduced_w4a4") == digest_tree(tmp_path / "o2" / "reduced_w4a4")
    # editing evaluation settings reuses every calibration stage
    p = _cli(tmp_path, cache, tmp_path / "o3", "--quant.eval.num_samples", "1")
    assert p.wait(600) == 0
    stages = json.loads((tmp_path / "o3" / "reduced_w4a4" / "stages.json").read_text())
    assert all(stages[k]["reused"] for k in ("capture_activations", "smooth", "gptq_lowrank"))
    assert not stages["evaluate"]["reused"] and _blocks(cache) == after


@pytest.mark.slow
def test_sequential_mixed_quantizes_fallbacks_in_the_walk(prefect_server, tmp_path):
    """Sequential + mixed precision: each layer's format is decided before calibration (quant.mixed.layers), the
    walk quantizes the fallback at W8A8 on the quantized prefix's outputs (per-channel int8 codes, int8 activations)
    and calibrates the next blocks on that W8A8 output; the tree loads and equals the pipeline's model. A budget
    with sequential mode is refused before work."""
    from flows.ptq import sam2_ptq
    from sam2ptq_core.config import ConfigError, load_config
    from sam2ptq_core.export.reader import load_quantized
    from sam2ptq_core.pipeline.preflight import preflight
    from sam2ptq_core.pipeline.stages import open_artifact
    base = [f"cache.root={tmp_path / 'c'}", f"output.root={tmp_path / 'o'}", "quant.calib.mode=sequential"]
    with pytest.raises(ConfigError, match="sequential decides each layer's format before calibrating it"):
        preflight(load_config(REDUCED_CFG, [*base, "quant.mixed={budget_bits: 5.5}"]))
    fb = ["blocks.1.mlp.proj_in", "blocks.3.attn.qkv"]
    out = Path(sam2_ptq(str(REDUCED_CFG), [*base, f"quant.mixed={{fallback: w8a8, layers: {fb}}}"]))
    cfg = load_config(out / "config.yaml")
    assert sorted(cfg.quant.mixed.layers) == sorted(fb)
    st = json.loads((out / "stages.json").read_text())
    q = open_artifact(cfg, {"stage": "gptq_lowrank", "key": st["gptq_lowrank"]["key"]}).qlayers()
    for k in fb:  # quantized in the walk at their own format
        assert q[k]["scale"].shape[1] == 1 and not q[k]["a"].numel()
        assert int(q[k]["codes"].abs().max()) > 7  # 8-bit codes
    assert q["blocks.2.attn.qkv"]["scale"].shape[1] == 2  # the rest stays W4 (groups of 64 over 96 inputs)
    mixed = open_artifact(cfg, {"stage": "mixed", "key": st["mixed"]["key"]})
    assert all(torch.equal(mixed.fallback_layers()[k]["codes"], q[k]["codes"]) for k in fb)  # no re-quantization
    x = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    m = load_quantized(out, "cache")
    with torch.inference_mode():
        m.get_image_embeddings(x)
    assert {n for n, mod in m.vision_encoder.backbone.named_modules()
            if getattr(mod, "scheme", None) and mod.scheme.a_dtype == "sint8"} == set(fb)
