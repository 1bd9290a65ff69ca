from pathlib import Path

import pytest
import yaml

from sam2ptq_core.config import ConfigError, config_hash, load_config
from sam2ptq_core.pipeline.stages import STAGES

ROOT = Path(__file__).resolve().parents[1]


def test_yaml_round_trip_and_hash_stability(tmp_path):
    cfg = load_config(ROOT / "configs" / "hiera_large_w4a8_svdquant.yaml")
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    again = load_config(p)
    assert again == cfg and config_hash(again) == config_hash(cfg)
    # the same meaning written in another key order hashes the same
    reordered = dict(reversed(list(cfg.model_dump(mode="json").items())))
    assert config_hash(load_config(reordered)) == config_hash(cfg)


def test_every_shipped_config_validates():
    files = sorted((ROOT / "configs").glob("*.yaml"))
    assert len(files) >= 13
    for f in files:
        load_config(f)


def test_stage_slices_isolate_changes():
    base = load_config(ROOT / "configs" / "hiera_tiny_w4a8.yaml")
    ev = load_config(base.model_dump(mode="json"), ["quant.eval.num_samples=3", "quant.ipts.dtype=uint4"])
    g = load_config(base.model_dump(mode="json"), ["quant.wgts.kernel_gptq.block_size=64"])
    a, b, c = ({n: s.config_slice(x) for n, s in STAGES.items()} for x in (base, ev, g))
    for stage in ("fetch_model", "build_calibration_set", "capture_activations", "gptq_lowrank", "rotate"):
        assert a[stage] == b[stage], stage
    assert a["evaluate"] != b["evaluate"]
    for stage in ("fetch_model", "build_calibration_set", "capture_activations", "rotate"):
        assert a[stage] == c[stage], stage
    assert a["gptq_lowrank"] != c["gptq_lowrank"]


def test_unknown_key_names_key_and_close_matches():
    with pytest.raises(ConfigError, match=r"unknown config key 'quant\.calib\.num_sample'.*quant\.calib\.num_samples"):
        load_config(None, ["quant.calib.num_sample=3"])
    with pytest.raises(ConfigError, match="unknown config key 'quant.smoth'"):
        load_config({"quant": {"smoth": {}}})


def test_bad_values_name_the_key():
    with pytest.raises(ConfigError, match="'model.name'"):
        load_config(None, ["model.name=huge"])
    with pytest.raises(ConfigError, match="image_size must be a multiple of 32"):
        load_config(None, ["quant.calib.image_size=100"])
    with pytest.raises(ConfigError, match="group_shapes"):
        load_config(None, ["quant.wgts.group_shapes=[[2, 64]]"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("/nonexistent.yaml")
    with pytest.raises(ConfigError, match="model.random_init is true, which would ignore it; add --model.random_init "
                                          "false"):  # the demo config + a checkpoint: never silently random
        load_config(ROOT / "configs/demo.yaml", ["model.path=/data/sam2.1-hiera-tiny"])
    with pytest.raises(ConfigError, match="transforms must be \\[hadamard\\].*use rotation: null"):  # [] was ignored
        load_config(None, ["quant.rotation={transforms: []}"])
    with pytest.raises(ConfigError, match="'quant.smooth.proj.granularity': Input should be 'Layer'"):
        load_config(None, ["quant.smooth={proj: {granularity: Channel}}"])
    with pytest.raises(ConfigError, match="quant.calib.sample_tokens"):  # 0 crashed the capture before
        load_config(None, ["quant.calib.sample_tokens=0"])


def test_overrides_parse_yaml_values_and_null():
    c = load_config(None, ["quant.calib.num_samples=64", "quant.smooth={}", "quant.wgts.kernel_gptq=null",
                           "quant.wgts.group_shapes=[[1, 64]]"])
    assert c.quant.calib.num_samples == 64 and c.quant.smooth.proj.num_grids == 20
    assert c.quant.wgts.kernel_gptq is None and c.quant.wgts.group_shapes == [[1, 64]]
    assert c.job_name() == "hiera_tiny_w4a8"
