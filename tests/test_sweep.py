"""Sweep planning and the comparison report (the Prefect side runs in tests/test_pool.py)."""
import json

import pytest

from sam2ptq_core.config import ConfigError
from sam2ptq_core.pipeline.sweep import plan_jobs, shared_captures, write_comparison

SHIPPED = ["configs/hiera_tiny_w4a4.yaml", "configs/hiera_tiny_w4a8.yaml", "configs/hiera_tiny_w8a8.yaml"]


def test_plan_names_jobs_and_groups_captures_per_model():
    jobs = plan_jobs(["tiny", "large"], SHIPPED, ["quant.calib.path=/data/coco"])
    names = [j.name for j, _ in jobs]
    assert names == ["hiera_tiny_w4a4", "hiera_large_w4a4", "hiera_tiny_w4a8", "hiera_large_w4a8",
                     "hiera_tiny_w8a8", "hiera_large_w8a8"]
    job, cfg = jobs[1]
    assert cfg.model.name == "large" and cfg.job_name() == "hiera_large_w4a4"
    assert job.parameters()["overrides"][-2:] == ["model.name=large", "output.job=hiera_large_w4a4"]
    assert cfg.quant.calib.path == "/data/coco"
    # the three recipes calibrate the same way: one capture per model
    assert sorted(map(sorted, shared_captures(jobs))) == [
        ["hiera_large_w4a4", "hiera_large_w4a8", "hiera_large_w8a8"],
        ["hiera_tiny_w4a4", "hiera_tiny_w4a8", "hiera_tiny_w8a8"]]
    # a job with other calibration settings gets its own capture
    more = plan_jobs(["tiny"], SHIPPED[:2], ["quant.calib.num_samples=64"]) + plan_jobs(["tiny"], SHIPPED[2:], [])
    assert sorted(map(len, shared_captures(more))) == [1, 2]


def test_plan_without_models_uses_each_configs_own():
    jobs = plan_jobs([], ["configs/hiera_large_w8a8.yaml", "configs/hiera_small_w4a4.yaml"], [])
    assert [(j.name, j.model) for j, _ in jobs] == [("hiera_large_w8a8", "large"), ("hiera_small_w4a4", "small")]


@pytest.mark.parametrize("models,configs,overrides,msg", [
    (["huge"], SHIPPED, [], "unknown model 'huge' in the sweep; models are tiny"),
    (["tiny"], [], [], "a sweep needs at least one config"),
    (["tiny"], SHIPPED, ["quant.wgts.low_rank.rank=-1"], "quant.wgts.low_rank.rank"),
    (["tiny"], [SHIPPED[0], SHIPPED[0]], [], "two sweep jobs would both write hiera_tiny_w4a4"),
])
def test_bad_sweeps_fail_before_any_job(models, configs, overrides, msg):
    with pytest.raises(ConfigError, match=msg.replace("(", r"\(")):
        plan_jobs(models, configs, overrides)


def test_comparison_names_failed_jobs_and_says_random_weights(tmp_path):
    rows = [{"job": "hiera_tiny_w4a4", "model": "tiny", "config": "a.yaml", "status": "COMPLETED", "message": "",
             "flow_run": "r1", "sqnr_db": 14.8, "miou": 0.93, "size_mib": 3.1, "random": True},
            {"job": "hiera_tiny_w8a8", "model": "tiny", "config": "b.yaml", "status": "COMPLETED", "message": "",
             "flow_run": "r2", "sqnr_db": 30.2, "miou": 0.99, "size_mib": 6.0, "random": True},
            {"job": "hiera_large_w4a4", "model": "large", "config": "a.yaml", "status": "FAILED",
             "message": "stage capture_activations failed: CUDA out of memory", "flow_run": "r3"}]
    md = write_comparison(rows, tmp_path)
    assert md.splitlines()[0].startswith("RANDOM WEIGHTS")
    assert "2 of 3 jobs completed" in md and "**failed**: stage capture_activations failed" in md
    assert "Failed jobs: hiera_large_w4a4 (flow run r3)" in md
    assert json.loads((tmp_path / "comparison.json").read_text()) == rows
    assert (tmp_path / "comparison.png").stat().st_size > 10_000 and (tmp_path / "comparison.md").read_text() == md
