import json
import math
import re
import shutil

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
    assert len(fam) == 1 and fam[0].startswith("cli:reduced_w4a4:") and re.search(
        r":cpu-float32:h[0-9a-f]{12}:w000000000000$", fam[0]), fam
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


def _cfg(tmp_path, backend: str, *extra: str) -> dict:
    """The reduced config on a local stage store or on an object store (file:// bucket + cache.local)."""
    from sam2ptq_core.config import load_config
    from tests.helpers import REDUCED_CFG
    root = [f"cache.root={tmp_path / 'c'}"] if backend == "local" else [
        f"cache.root=file://{tmp_path / 'bucket'}", f"cache.local={tmp_path / 'local'}"]
    return load_config(REDUCED_CFG, [*root, *extra]).model_dump(mode="json")


def _refs(cfg: dict):
    """(eval_ref(miou, key, heldout=None, files=None), model ref) built in ``cfg``'s store: a fake evaluate stage
    with that mIoU and either a recorded held-out digest (manifest meta, as the evaluate stage records it) or only
    the files metrics.json lists (a stage built before the digest was recorded)."""
    from sam2ptq_core.config import load_config
    from sam2ptq_core.pipeline.stages import store_of
    store = store_of(load_config(cfg))

    def eval_ref(miou, key, heldout=None, files=()):
        def build(d):
            d.joinpath("metrics.json").write_text(json.dumps({"masks": {"miou_vs_fp": miou}, "encoder": {"sqnr_db": {}},
                                                              "eval_files": [str(f) for f in files]}))
            return {"heldout_sha256": heldout} if heldout else {}
        m, _ = store.run("evaluate", key, {}, {}, build)
        return {"stage": "evaluate", "key": m.key, "seconds": 5.0}
    return eval_ref, _model_ref(store, "c" * 64)


@pytest.mark.parametrize("backend", ["local", "object"])
def test_an_intended_recipe_change_is_accepted_as_the_new_baseline(tmp_path, backend):
    """Smoothing off under the same job drops mIoU for good: main failed every later night against the best run
    ever, with no way out short of deleting the ledger. An explicit accept (one run, with a reason) makes that run
    the family's baseline on both ledger backends; later nights are compared with it, and a real drop after it
    still fails."""
    from tasks.regression import regression_check
    cfg = _cfg(tmp_path, backend)
    ev, model = _refs(cfg)
    regression_check.fn(cfg, ev(0.95, "a", "1" * 64), model)
    for night in ("b", "c"):  # the recipe change: fails every night
        with pytest.raises(StageError, match=r"fell from 0.9500 \(run local\) to 0.9000"):
            regression_check.fn(cfg, ev(0.90, night, "1" * 64), model)
    got = regression_check.fn(cfg, ev(0.90, "d", "1" * 64), model, accept="smoothing off, intended")
    assert got["message"] == got["note"] == (
        "baseline accepted (smoothing off, intended): mIoU vs FP 0.9000 replaces the best 0.9500 of run local "
        "(-5.00 points); later runs of this family are compared with this run"), got
    assert "+0.00 points" in regression_check.fn(cfg, ev(0.90, "e", "1" * 64), model)["message"]
    assert regression_check.fn(cfg, ev(0.898, "f", "1" * 64), model)["note"] == ""  # −0.2 against the new baseline
    with pytest.raises(StageError, match=r"fell from 0.9000 \(run local\) to 0.8930"):  # −0.7: still guarded
        regression_check.fn(cfg, ev(0.893, "g", "1" * 64), model)
    from sam2ptq_core.config import load_config
    from sam2ptq_core.pipeline.stages import store_of
    ledger = store_of(load_config(cfg)).ledger()
    runs = ledger[got["family"]]
    assert [(r["miou_vs_fp"], r.get("accepted")) for r in runs] == [
        (0.95, None), (0.90, "smoothing off, intended"), (0.90, None), (0.898, None)]


def test_the_held_out_images_drawn_are_part_of_the_family(tmp_path):
    """New files in the data folder change the held-out draw, and with it what a run is judged on: main compared
    the new images' score with the old images' best (a 5-point "regression" here). The family carries a digest of
    the drawn files' contents (the evaluate stage records it; for a stage built before it did, it is hashed from
    the files metrics.json lists: the same digest)."""
    from sam2ptq_core.files import file_sha256
    from sam2ptq_core.pipeline.regression import heldout_digest
    from tasks.regression import regression_check
    from tests.helpers import ROOT
    imgs = sorted((ROOT / "examples" / "images").glob("*.jpg"))
    for f in imgs[:3]:
        shutil.copy(f, tmp_path / f.name)
    old = [tmp_path / f.name for f in imgs[:2]]
    cfg = _cfg(tmp_path, "local")
    ev, model = _refs(cfg)
    first = regression_check.fn(cfg, ev(0.95, "a", files=old), model)  # an old stage: hashed from its files
    digest = heldout_digest([file_sha256(f) for f in old])
    assert f":h{digest[:12]}:w" in first["family"]
    same = regression_check.fn(cfg, ev(0.949, "b", heldout=digest), model)  # recorded: the same family
    assert same["family"] == first["family"] and "0.9490 vs 0.9500" in same["message"]
    new = heldout_digest([file_sha256(tmp_path / imgs[0].name), file_sha256(tmp_path / imgs[2].name)])
    got = regression_check.fn(cfg, ev(0.90, "c", heldout=new), model)
    assert got["note"] == got["message"] == (
        f"new held-out images {new[:12]} since run local (was {digest[:12]}: files added to or changed in the data "
        f"folder): new baseline, mIoU vs FP 0.9000"), got
    (tmp_path / imgs[1].name).unlink()  # an old stage whose held-out file is gone: one line, no guess
    with pytest.raises(StageError, match=rf"held-out image {tmp_path / imgs[1].name} \(listed by evaluate"):
        regression_check.fn(cfg, ev(0.95, "d", files=old), model)


def test_a_non_finite_miou_fails_and_never_becomes_the_best():
    """``nan > threshold`` is False: main passed a NaN score, recorded it, and a NaN first in the history then won
    every max() (every later drop passed). Now NaN (or inf) fails, even with an accept, and is never recorded; a NaN
    already in a ledger is ignored."""
    from sam2ptq_core.pipeline.regression import check_and_record
    ledger = {"fam": [{"miou_vs_fp": 0.95, "run": "r1", "time": 1}]}
    for bad in (float("nan"), float("inf")):
        for accept in ("", "intended"):
            v = check_and_record(ledger, "fam", {"miou_vs_fp": bad, "run": "r2", "time": 2}, 0.5, accept=accept)
            assert not v.ok and v.message.startswith(f"mask mIoU vs float is {bad}, not a score"), v.message
    assert ledger == {"fam": [{"miou_vs_fp": 0.95, "run": "r1", "time": 1}]}
    poisoned = {"fam": [{"miou_vs_fp": math.nan, "run": "r0", "time": 0}, {"miou_vs_fp": 0.95, "run": "r1", "time": 1}]}
    v = check_and_record(poisoned, "fam", {"miou_vs_fp": 0.90, "run": "r2", "time": 2}, 0.5)
    assert not v.ok and "fell from 0.9500 (run r1) to 0.9000" in v.message, v.message


@pytest.mark.parametrize("args", [["--accept-baseline", " "], ["--ablation", "--accept-baseline", "why"]])
def test_accept_baseline_needs_a_reason_and_one_run(args, tmp_path):
    import subprocess
    import sys

    from tests.helpers import ROOT
    r = subprocess.run([sys.executable, str(ROOT / "quantize_sam2.py"), "--config", "configs/demo.yaml",
                        "--cache.root", str(tmp_path / "c"), *args], capture_output=True, text=True, cwd=ROOT,
                       timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: --accept-baseline takes a reason and applies to one quantization run, not --ablation (e.g. "
        "--accept-baseline 'smoothing off, intended')"], r.stderr
    assert not any(tmp_path.iterdir())


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
    # the evaluate stage recorded the digest of the held-out files it read, and the family carries it
    from sam2ptq_core.config import load_config
    from sam2ptq_core.files import file_sha256
    from sam2ptq_core.pipeline.regression import heldout_digest
    from sam2ptq_core.pipeline.stages import store_of
    store = store_of(load_config(REDUCED_CFG, base))
    ev = store.get("evaluate", _json.loads((out / "stages.json").read_text())["evaluate"]["key"])
    files = _json.loads((out / "metrics.json").read_text())["eval_files"]
    assert ev.meta["heldout_sha256"] == heldout_digest([file_sha256(Path(f)) for f in files])
    assert all(f":h{ev.meta['heldout_sha256'][:12]}:w" in k for k in store.ledger().keys())
    # an accepted baseline (the flow parameter behind --accept-baseline and a deployment's -p accept_baseline=…)
    # is named in the new tree's report, its stages.json and the CLI summary
    import quantize_sam2
    state = sam2_ptq(str(REDUCED_CFG), [*base, f"output.root={tmp_path / 'o2'}"], accept_baseline="new recipe",
                     return_state=True)
    out = Path(state.result())
    guard = _json.loads((out / "stages.json").read_text())["export"]["regression_guard"]
    assert guard.startswith("baseline accepted (new recipe): mIoU vs FP "), guard
    assert (out / "report.md").read_text().splitlines()[2] == f"**Regression guard:** {guard}"
    assert f"regression guard: {guard}" in quantize_sam2._summary(out, 0.0).splitlines()
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
    with get_client(sync_client=True) as client:  # and in the run's metrics table artifact
        art = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["sam2-ptq-metrics"]),
                                    flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    rows = _json.loads(art[-1].data) if isinstance(art[-1].data, str) else art[-1].data
    assert {"metric": "regression guard", "key": "regression_guard", "value": guard} in rows
