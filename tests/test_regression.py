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
    from sam2ptq_core.pipeline.config import load_config
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
        return {"stage": "evaluate", "key": m.key}
    c = cfg.model_dump(mode="json")
    assert "baseline" in regression_check.fn(c, eval_ref(0.95, "a"))["message"]
    regression_check.fn(c, eval_ref(0.947, "b"))  # −0.3 points against the best (0.95): allowed
    # another −0.3 night: −0.6 against the best run, so the guard trips although the last run was only 0.3 better
    with pytest.raises(StageError, match="regression: mask mIoU vs float fell from 0.9500"):
        regression_check.fn(c, eval_ref(0.944, "c"))
    fam = [k for k in store.ledger().keys()]
    assert len(fam) == 1 and fam[0].startswith("cli:reduced_w4a4:") and fam[0].endswith(":cpu-float32")
    assert [e["miou_vs_fp"] for e in store.ledger()[fam[0]]] == [0.95, 0.947]  # a failed run is no baseline
    # another evaluation protocol is another family: no comparison with the old baseline
    c2 = load_config(REDUCED_CFG, [f"cache.root={tmp_path}", "quant.eval.points_per_side=5"]).model_dump(mode="json")
    assert "baseline" in regression_check.fn(c2, eval_ref(0.5, "d"))["message"]
    # another dtype is another family too
    c3 = load_config(REDUCED_CFG, [f"cache.root={tmp_path}", "model.dtype=bfloat16"]).model_dump(mode="json")
    assert "baseline" in regression_check.fn(c3, eval_ref(0.5, "e"))["message"]
