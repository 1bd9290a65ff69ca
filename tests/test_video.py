"""The video path (issue 30): DAVIS's J&F on masks with answers worked out by hand; the video encoder file against
the apps' encoder it is cut from; a generated clip tracked end to end with the quantized encoder (torch and ONNX
Runtime) through ``predict --video``, scored against the float tracker; bad input as one line."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from sam2ptq_core.algorithms.metrics import boundary_map, davis_jf

H, W = 100, 120  # r = ceil(0.008 · hypot(100, 120)) = ceil(1.25) = 2 pixels


def _band(top: int, height: int) -> torch.Tensor:
    m = torch.zeros(H, W, dtype=torch.bool)
    m[top:top + height] = True
    return m


def test_jf_identical_masks_and_empty_frames_score_one():
    m = _band(30, 20)
    assert davis_jf(m, m) == (1.0, 1.0)
    empty = torch.zeros(H, W, dtype=torch.bool)
    assert davis_jf(empty, empty) == (1.0, 1.0)
    assert davis_jf(empty, m) == (0.0, 0.0)


def test_boundary_is_the_row_above_and_the_last_row_of_a_full_width_band():
    b = boundary_map(_band(30, 20))
    assert b.sum(1).nonzero().flatten().tolist() == [29, 49] and int(b.sum()) == 2 * W


@pytest.mark.parametrize("d, want_f", [(1, 1.0), (2, 1.0), (5, 0.0), (20, 0.5)])
def test_jf_of_a_band_shifted_by_d_rows(d, want_f):
    """Band of h = 20 rows shifted down by d: J = (h − d)/(h + d); the boundaries (two rows each, d apart) match
    within r = 2 pixels, so F = 1 for d ≤ 2, F = 0 for 2 < d with |d − h| > 2, and at d = h the shifted band's top
    boundary row is the reference's bottom one: P = R = 1/2, F = 1/2."""
    h = 20
    j, f = davis_jf(_band(30 + d, h), _band(30, h))
    assert math.isclose(j, (h - d) / (h + d), abs_tol=1e-12)
    assert math.isclose(f, want_f, abs_tol=1e-12)


def test_jf_of_a_spurious_second_band():
    """pred = ref + a far band of the same height: J = 1/2; boundary precision 2/4, recall 1: F = 2/3."""
    ref = _band(10, 15)
    j, f = davis_jf(ref | _band(60, 15), ref)
    assert math.isclose(j, 0.5, abs_tol=1e-12) and math.isclose(f, 2 / 3, abs_tol=1e-12)


# ---- the quantized encoder in Sam2VideoModel, on a generated clip ----------------------------------------------

FRAMES, FH, FW = 6, 96, 128


def _clip(d, n: int = FRAMES):
    """A red square moving right and down over a dark, textured background: PNG frames in ``d``."""
    from PIL import Image
    rng = np.random.default_rng(0)
    bg = rng.integers(20, 70, (FH, FW, 3), dtype=np.uint8)
    d.mkdir()
    for k in range(n):
        a = bg.copy()
        a[20 + 2 * k:50 + 2 * k, 30 + 4 * k:70 + 4 * k] = (220, 60, 60)
        Image.fromarray(a).save(d / f"{k:05d}.png")
    return d


def _mp4(frames_dir, path):
    """The PNG frames as an H.264 file (PyAV), so the file decoding path is exercised too."""
    from PIL import Image

    from sam2ptq_core.export.video import OverlayWriter
    w = OverlayWriter(path, 10.0, (FW, FH))
    for f in sorted(frames_dir.iterdir()):
        w.add(Image.open(f).convert("RGB"))
    w.close()
    return path


@pytest.mark.slow
def test_video_encoder_file_is_the_apps_encoder_cut_at_the_raw_fpn_levels(onnx_tree):
    """On ONNX Runtime, conv_s0 / conv_s1 (the tree's own float weights) of the video file's raw levels give the
    apps' file's high_res_feats, and vision_features + no_memory_embedding its image_embed (measured: ≤ 3e-6
    relative)."""
    import onnxruntime as ort
    from PIL import Image

    from sam2ptq_core.export.onnx_interface import pair_names
    from sam2ptq_core.export.onnx_predictor import preprocess
    from sam2ptq_core.export.reader import load_quantized
    from tests.helpers import ROOT
    names = pair_names("tiny")
    x = preprocess(Image.open(ROOT / "examples" / "images" / "coffee.jpg"), 128)
    apps = ort.InferenceSession(str(onnx_tree / "onnx" / names["encoder"])).run(None, {"image": x})
    video = ort.InferenceSession(str(onnx_tree / "onnx" / names["video_encoder"]))
    assert [o.name for o in video.get_outputs()] == ["backbone_fpn_0", "backbone_fpn_1", "vision_features"]
    raw = [torch.from_numpy(o) for o in video.run(None, {"image": x})]
    m = load_quantized(onnx_tree)
    with torch.no_grad():
        got = [m.mask_decoder.conv_s0(raw[0]), m.mask_decoder.conv_s1(raw[1]),
               raw[2] + m.no_memory_embedding.view(1, -1, 1, 1)]
    for g, want in zip(got, apps):
        rel = float((g - torch.from_numpy(want)).norm() / torch.from_numpy(want).norm())
        assert rel < 1e-5, rel


@pytest.mark.slow
def test_predict_video_tracks_a_generated_clip_with_the_quantized_encoder(onnx_tree, tmp_path):
    """predict --video on an H.264 clip, two objects (a point, a box), encoder on ONNX Runtime: one indexed PNG per
    frame with labels 0/1/2, an overlay clip with every frame, timing.json; its masks against the fake-quant
    tracker's (the same quantized encoder in torch) and the float tracker's, J&F per object and frame."""
    import av
    from PIL import Image

    from sam2ptq_core.export.predict import main
    from sam2ptq_core.export.video import float_video_model, read_frames, video_model
    from sam2ptq_core.sam2.video import ObjectPrompt, track
    clip = _mp4(_clip(tmp_path / "frames"), tmp_path / "clip.mp4")
    out = tmp_path / "tracked"
    args = ["--run", str(onnx_tree), "--video", str(clip), "--point", "50,35", "--object", "box=25,15,75,55",
            "--out", str(out), "--runtime", "onnxruntime"]
    assert main(args) == 0
    pngs = sorted((out / "masks").iterdir())
    assert [p.name for p in pngs] == [f"{k:05d}.png" for k in range(FRAMES)]
    labels = [np.asarray(Image.open(p)) for p in pngs]
    assert all(lab.shape == (FH, FW) and set(np.unique(lab)) <= {0, 1, 2} for lab in labels)
    with av.open(str(out / "overlay.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) == FRAMES
    timing = json.loads((out / "timing.json").read_text())
    assert timing["random_weights"] and len(timing["frames"]) == FRAMES
    assert all(r["encoder_s"] > 0 and r["per_object_s"] > 0 for r in timing["frames"])
    # the same clip, in torch: the quantized encoder (fake quant) and the float one
    prompts = [ObjectPrompt(1, np.array([[50 * 128 / FW, 35 * 128 / FH]]), np.array([1])),
               ObjectPrompt(2, np.array([[25 * 128 / FW, 15 * 128 / FH], [75 * 128 / FW, 55 * 128 / FH]]),
                            np.array([2, 3]))]
    src = read_frames(clip)
    runs = {k: [f.masks for f in track(m, src.frames(), prompts)] for k, m in (
        ("runtime", video_model(onnx_tree, "onnxruntime")), ("fake", video_model(onnx_tree, "fake")),
        ("float", float_video_model(onnx_tree)))}

    def label(masks):  # write_masks' rule: later objects win where masks overlap
        lab = torch.zeros(masks.shape[1:], dtype=torch.uint8)
        for k, m in enumerate(masks):
            lab[m] = k + 1
        return lab.numpy()
    assert all((label(m) == lab).all() for m, lab in zip(runs["runtime"], labels))  # the CLI wrote the tracker's
    jf_rt = [davis_jf(r[k], q[k]) for r, q in zip(runs["runtime"], runs["fake"]) for k in range(2)]
    jf_fp = [davis_jf(q[k], f[k]) for q, f in zip(runs["fake"], runs["float"]) for k in range(2)]
    assert all(q.any() and not q.all() for m in runs["fake"] for q in m), "an empty or full mask makes J&F trivial"
    # runtime (static activations, the file) vs fake quant (the evaluated model): measured J ≥ 0.829, F ≥ 0.977
    assert min(j for j, _ in jf_rt) > 0.75 and min(f for _, f in jf_rt) > 0.95, jf_rt
    # fake quant vs float, random reduced W4A4: measured J ≥ 0.804, F ≥ 0.973
    assert min(j for j, _ in jf_fp) > 0.75 and min(f for _, f in jf_fp) > 0.95, jf_fp


@pytest.mark.slow
@pytest.mark.parametrize("case, want", [
    ("empty", "the folder holds no frames"), ("garbage", "cannot be decoded"), ("frame", "--frame 9: "),
    ("object", "is not point=X,Y, negative=X,Y or box=X1,Y1,X2,Y2"), ("outside", "is outside the image"),
    ("foreign_out", "exists and was not written by predict --video"),
    ("corrupt_frame", "frame 00002.png cannot be read"), ("mixed_sizes", "all frames must have one size")])
def test_predict_video_bad_input_is_one_line(onnx_tree, tmp_path, capsys, case, want):
    from sam2ptq_core.export.predict import main
    frames = _clip(tmp_path / "frames", 3)
    video, extra, out = str(frames), ["--point", "50,35"], tmp_path / "out"
    if case == "empty":
        (tmp_path / "none").mkdir()
        video = str(tmp_path / "none")
    elif case == "garbage":
        (tmp_path / "clip.mp4").write_bytes(b"not a video" * 100)
        video = str(tmp_path / "clip.mp4")
    elif case == "frame":
        extra += ["--frame", "9"]
    elif case == "object":
        extra += ["--object", "circle=1,2"]
    elif case == "outside":
        extra = ["--point", f"{FW},10"]
    elif case == "corrupt_frame":  # found only while tracking, after frames 0 and 1 were written to the temp tree
        (frames / "00002.png").write_bytes(b"not a png")
    elif case == "mixed_sizes":
        from PIL import Image
        Image.new("RGB", (FW + 2, FH)).save(frames / "00002.png")
    else:
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    assert main(["--run", str(onnx_tree), "--video", video, *extra, "--out", str(out), "--runtime", "fake"]) == 2
    # what a terminal shows: each line after its last carriage return (the progress bar, leave=False, clears itself)
    err = [ln.rsplit("\r", 1)[-1] for ln in capsys.readouterr().err.split("\n")]
    err = [ln for ln in err if ln.strip()]
    assert len(err) == 1 and err[0].startswith("error: ") and want in err[0], err
    assert case == "foreign_out" and (out / "notes.txt").read_text() == "mine" or not out.exists()


@pytest.mark.slow
def test_flow_video_evaluation_is_a_stage_with_a_report_section(onnx_tree, tmp_path):
    """quant.eval.video on the ONNX tree's own stages (same cache): only evaluate_video and export are built; the
    tree's report gets a "Video" section (random-weights banner first), its strip and J&F curve, metrics.json a
    "video" entry; a second run reuses the stage; a clip that does not open stops the flow before any stage."""
    from flows.ptq import sam2_ptq
    from sam2ptq_core.config import ConfigError
    from tests.helpers import REDUCED_CFG
    clip = _clip(tmp_path / "frames", 4)
    video = f"{{clip: {clip}, objects: ['point=50,35', 'box=25,15,75,55'], num_frames: 3, strip_frames: 2}}"
    ovs = [f"cache.root={onnx_tree.parent.parent / 'c'}", f"output.root={tmp_path / 'o'}",
           "onnx={runtime: onnxruntime, latency_runs: 1}", f"quant.eval.video={video}"]
    out = Path(sam2_ptq(str(REDUCED_CFG), ovs))
    st = json.loads((out / "stages.json").read_text())
    assert [k for k, v in st.items() if not v["reused"]] == ["evaluate_video", "export"]
    report = (out / "report.md").read_text()
    assert report.startswith("RANDOM WEIGHTS") and "## Video (SAM2's video predictor" in report
    assert (out / "video_strip.png").stat().st_size > 0 and (out / "video_jf.png").stat().st_size > 0
    v = json.loads((out / "metrics.json").read_text())["video"]
    assert v["frames"] == [0, 1, 2] and len(v["objects"]) == 2 and 0.5 < v["JF"] <= 1
    out = Path(sam2_ptq(str(REDUCED_CFG), ovs))
    assert json.loads((out / "stages.json").read_text())["evaluate_video"]["reused"]
    bad = [*ovs[:-1], f"quant.eval.video={{clip: {tmp_path / 'missing.mp4'}, objects: ['box=1,1,5,5']}}"]
    with pytest.raises(ConfigError, match="quant.eval.video: clip .*missing.mp4 does not exist"):
        sam2_ptq.fn(str(REDUCED_CFG), bad)


@pytest.mark.slow
def test_a_tree_exported_before_the_video_file_gets_it_cut_on_the_fly(onnx_tree, tmp_path):
    """A tree without onnx/<stem>.video_encoder.onnx (exported before it existed): video_model cuts the apps'
    encoder itself, and the masks equal those of the tree's own video file."""
    import shutil

    from sam2ptq_core.export.onnx_interface import pair_names
    from sam2ptq_core.export.video import read_frames, video_model
    from sam2ptq_core.sam2.video import ObjectPrompt, track
    old = tmp_path / "old"
    shutil.copytree(onnx_tree, old)
    (old / "onnx" / pair_names("tiny")["video_encoder"]).unlink()
    src = read_frames(_clip(tmp_path / "frames", 2))
    prompts = [ObjectPrompt(1, np.array([[50.0, 47.0]]), np.array([1]))]
    got = [f.masks for f in track(video_model(old, "onnxruntime"), src.frames(), prompts)]
    want = [f.masks for f in track(video_model(onnx_tree, "onnxruntime"), src.frames(), prompts)]
    assert all(torch.equal(g, w) for g, w in zip(got, want)) and got[0].any()


def test_the_video_evaluation_leaves_the_image_regression_family_alone():
    """quant.eval.video adds a stage; the image mIoU guard's family (eval_protocol) must not change with it."""
    from sam2ptq_core.config import load_config
    from sam2ptq_core.pipeline.regression import eval_protocol
    from tests.helpers import REDUCED_CFG
    plain = load_config(str(REDUCED_CFG), [])
    video = load_config(str(REDUCED_CFG), ["quant.eval.video={clip: x.mp4, objects: ['box=1,1,5,5']}"])
    assert eval_protocol(plain) == eval_protocol(video)


def test_jf_scores_leave_the_prompt_frame_out_of_the_means():
    """Frame 0 (the prompt frame) disagrees completely, frames 1–2 agree: the means are over frames 1–2 (1.0),
    the per-frame lists keep frame 0 (J 0)."""
    from sam2ptq_core.sam2.video import TrackedFrame, jf_scores
    a, b = _band(10, 20)[None], _band(60, 20)[None]
    ref = [TrackedFrame(i, a, 0.0, 0.0) for i in range(3)]
    got = [TrackedFrame(0, b, 0.0, 0.0), *ref[1:]]
    s = jf_scores(ref, got)
    assert s["J"][0] == [0.0] and s["mean_J"] == 1.0 and s["JF"] == 1.0 and s["scored_frames"] == [1, 2]


@pytest.mark.slow
def test_an_image_only_checkpoint_cannot_make_a_silently_random_tracker(tmp_path):
    """A local checkpoint written by Sam2Model.save_pretrained has no memory modules: one error naming the fix."""
    from sam2ptq_core.sam2.loading import build_random
    from sam2ptq_core.sam2.video import build_video_model
    from tests.helpers import ARCH
    m = build_random("tiny", 0, 128, ARCH)
    m.save_pretrained(tmp_path / "ckpt")
    with pytest.raises(ValueError, match="holds no weights for SAM2's video modules"):
        build_video_model(m, checkpoint=tmp_path / "ckpt")
