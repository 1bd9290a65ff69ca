import json

import pytest

from sam2ptq_core.pipeline.regression import compare_runs
from sam2ptq_core.pipeline.stages import StageError


def test_compare_runs_threshold():
    prev = {"miou_vs_fp": 0.950, "run": "r1"}
    assert compare_runs(None, {"miou_vs_fp": 0.9}, 0.5).ok
    assert compare_runs(prev, {"miou_vs_fp": 0.946}, 0.5).ok  # −0.4 points
    v = compare_runs(prev, {"miou_vs_fp": 0.940}, 0.5)       # −1.0 point
    assert not v.ok and "0.9500 (run r1) to 0.9400" in v.message and abs(v.drop_points - 1.0) < 1e-9


def test_regression_task_uses_ledger(tmp_path):
    from sam2ptq_core.config import load_config
    from sam2ptq_core.pipeline.store import StageStore
    from tasks.regression import regression_check
    from tests.helpers import REDUCED_CFG
    cfg = load_config(REDUCED_CFG, [f"cache.root={tmp_path}"])
    store = StageStore(tmp_path)

    def eval_ref(miou, key):
        def build(d):
            d.joinpath("metrics.json").write_text(
                json.dumps({"masks": {"miou_vs_fp": miou}, "encoder": {"sqnr_db": {}}}))
        m, _ = store.run("evaluate", key, {}, {}, build)
        return {"stage": "evaluate", "key": m.key, "seconds": 12.0}
    model = _model_ref(store, "0" * 64)
    c = cfg.model_dump(mode="json")
    assert "baseline" in regression_check.fn(c, eval_ref(0.95, "a"), model)["message"]
    regression_check.fn(c, eval_ref(0.947, "b"), model)  # −0.3 points against the best (0.95): allowed
    # another −0.3 night: −0.6 against the best run, so the guard trips although the last run was only 0.3 better
    with pytest.raises(StageError, match=r"regression: mask mIoU vs float fell from 0.9500 \(run local\) to 0.9440 "
                                         r"\(its evaluation took 12 s\)"):
        regression_check.fn(c, eval_ref(0.944, "c"), model)
    fam = [k for k in store.ledger().keys()]
    assert len(fam) == 1 and fam[0].startswith("cli:reduced_w4a4:") and fam[0].endswith(":cpu-float32:w000000000000")
    assert [e["miou_vs_fp"] for e in store.ledger()[fam[0]]] == [0.95, 0.947]  # a failed run is no baseline
    # another evaluation protocol is another family: no comparison with the old baseline
    c2 = load_config(REDUCED_CFG, [f"cache.root={tmp_path}", "quant.eval.points_per_side=5"]).model_dump(mode="json")
    assert "baseline" in regression_check.fn(c2, eval_ref(0.5, "d"), model)["message"]
    # another dtype is another family too
    c3 = load_config(REDUCED_CFG, [f"cache.root={tmp_path}", "model.dtype=bfloat16"]).model_dump(mode="json")
    assert "baseline" in regression_check.fn(c3, eval_ref(0.5, "e"), model)["message"]


def _model_ref(store, sha: str, name: str = "tiny", path: str = ""):
    def build(d):
        d.joinpath("model.json").write_text(json.dumps({"name": name, "source": "local" if path else "random",
                                                        "path": path, "random_weights": not path,
                                                        "weights_sha256": sha}))
    m, _ = store.run("fetch_model", sha, {}, {}, build)
    return {"stage": "fetch_model", "key": m.key}


def test_new_model_weights_start_a_new_baseline_unless_asked(tmp_path):
    """The same job with other weights (a checkpoint after the random demo, or a moved hub revision) is not compared
    with the old model's runs: it starts a new baseline and says which model ran before; with
    quant.eval.regression_across_models the second run is compared and the failure names both models."""
    from sam2ptq_core.config import load_config
    from sam2ptq_core.pipeline.store import StageStore
    from tasks.regression import regression_check
    from tests.helpers import REDUCED_CFG
    store = StageStore(tmp_path)

    def eval_ref(miou, key):
        def build(d):
            d.joinpath("metrics.json").write_text(json.dumps({"masks": {"miou_vs_fp": miou},
                                                              "encoder": {"sqnr_db": {}}}))
        m, _ = store.run("evaluate", key, {}, {}, build)
        return {"stage": "evaluate", "key": m.key, "seconds": 3.0}
    old, new = _model_ref(store, "a" * 64), _model_ref(store, "b" * 64, path="/data/sam2.1-hiera-tiny")
    c = load_config(REDUCED_CFG, [f"cache.root={tmp_path}"]).model_dump(mode="json")
    regression_check.fn(c, eval_ref(0.9771, "e1"), old)
    msg = regression_check.fn(c, eval_ref(0.9447, "e2"), new)["message"]  # 3.24 points lower, but another model
    assert msg.startswith("new model weights bbbbbbbbbbbb since run local (tiny weights aaaaaaaaaaaa (random)): "
                          "new baseline"), msg
    across = load_config(REDUCED_CFG, [f"cache.root={tmp_path / 'x'}", "quant.eval.regression_across_models=true"])
    store2 = StageStore(tmp_path / "x")
    store = store2
    old2, new2 = _model_ref(store2, "a" * 64), _model_ref(store2, "b" * 64, path="/data/sam2.1-hiera-tiny")
    regression_check.fn(across.model_dump(mode="json"), eval_ref(0.9771, "f1"), old2)
    with pytest.raises(StageError, match=r"the models differ: tiny weights aaaaaaaaaaaa \(random\) then, tiny "
                                         r"weights bbbbbbbbbbbb \(/data/sam2.1-hiera-tiny\) now"):
        regression_check.fn(across.model_dump(mode="json"), eval_ref(0.9447, "f2"), new2)


@pytest.mark.slow
def test_same_job_with_other_weights_is_a_new_baseline_end_to_end(prefect_server, tmp_path):
    """The newcomer's path: the random-weights config, then the same job with a local checkpoint (other weights):
    both pass and the second tree's report says "new model weights … new baseline" under its first line; with
    quant.eval.regression_across_models a third run (the weaker model's again) is compared with the other model's
    run and its guard line names both models."""
    import json as _json
    from pathlib import Path

    from flows.ptq import sam2_ptq
    from sam2ptq_core.sam2.loading import build_random
    from tests.helpers import ARCH, REDUCED_CFG
    build_random("tiny", 99, 128, ARCH).save_pretrained(tmp_path / "ckpt")
    base = [f"cache.root={tmp_path / 'c'}", f"output.root={tmp_path / 'o'}", "output.job=guard"]
    checkpoint = ["model.random_init=false", "model.arch={}", f"model.path={tmp_path / 'ckpt'}"]
    out = Path(sam2_ptq(str(REDUCED_CFG), base))
    first = _json.loads((out / "stages.json").read_text())["fetch_model"]["key"]
    miou = [_json.loads((out / "metrics.json").read_text())["masks"]["miou_vs_fp"]]
    out = Path(sam2_ptq(str(REDUCED_CFG), [*base, *checkpoint]))
    miou.append(_json.loads((out / "metrics.json").read_text())["masks"]["miou_vs_fp"])
    lines = (out / "report.md").read_text().splitlines()
    assert lines[2].startswith("**Regression guard:** new model weights ") and "new baseline" in lines[2], lines[:3]
    assert "(tiny weights " in lines[2] and "(random)" in lines[2]  # names the model the job ran before
    assert _json.loads((out / "stages.json").read_text())["fetch_model"]["key"] != first
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import LogSort

    def guard_logs():
        with get_client(sync_client=True) as client:
            return [r.message for r in client.read_logs(limit=200, sort=LogSort.TIMESTAMP_DESC)
                    if "models differ" in r.message]
    assert not guard_logs()
    try:
        # repeat the weaker model's run, so the best earlier run is the other model's
        again = base if miou[0] < miou[1] else [*base, *checkpoint]
        sam2_ptq(str(REDUCED_CFG), [*again, "quant.eval.regression_across_models=true"])
        msgs = guard_logs()
        assert msgs and "then, tiny weights" in msgs[0]
    except StageError as e:  # a drop beyond the threshold against the other model: the failure names both
        assert "the models differ: tiny weights" in str(e)
