"""OpenVINO's model cache (export/model_cache.py) and predict's runtime: the cache lives where it is told (a run's
local state folder), says when a compile is not cached, warns and compiles without it where it cannot be written,
stays within its bound (least recently used out) and is swept by gc; predict runs the tree's file at the precision it
was evaluated with, and a runtime that cannot open the file is one error line. Files are one-op ONNX graphs written
with onnx.helper (a compile takes ~0.1 s)."""
import json
import logging
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

pytest.importorskip("openvino", reason="the '.[openvino]' extra (scripts/setup.sh installs it)")
pytest.importorskip("onnx", reason="the '.[onnx]' extra")

from sam2ptq_core.export import runtimes  # noqa: E402
from sam2ptq_core.export.model_cache import GRACE_S, ModelCache  # noqa: E402
from tests.helpers import ROOT  # noqa: E402

SIZE = 64  # image_size of the fake trees; pixel_values [1, 3, 64, 64]


def _onnx(path, seed: int = 0, op: str = "Add"):
    """y = pixel_values + c (c [1, 3, 64, 64] float32, 48 KiB): a valid encoder-shaped file whose bytes vary with
    ``seed`` (``op``: another operator in its place). Returns c."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    c = np.random.default_rng(seed).standard_normal((1, 3, SIZE, SIZE)).astype(np.float32)
    shape = [1, 3, SIZE, SIZE]
    g = helper.make_graph([helper.make_node(op, ["pixel_values", "c"], ["y"])], "g",
                          [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
                          [numpy_helper.from_array(c, "c")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)], ir_version=10), str(path))
    return c


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append((record.levelname, record.getMessage()))


def _logger():
    lg = logging.Logger("test", logging.INFO)
    lg.addHandler(h := _Records())
    return lg, h.lines


def test_openvino_cache_is_the_given_folder_and_says_when_it_compiles(tmp_path, monkeypatch):
    """``cache`` puts the entry (content-named copy + OpenVINO's blob) under the given folder, nothing under
    ~/.cache; "compiling … (first time on this machine)" comes before the first compile only. Measured: 0.11 s
    first open, 0.02 s cached (a one-op graph; the 1024² tiny encoder: 1.3 s vs 0.3 s)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home-cache"))
    f = tmp_path / "encoder.onnx"
    c = _onnx(f)
    lg, lines = _logger()
    cache = ModelCache(tmp_path / "local" / "openvino", 1 << 30, lg)
    run = runtimes.open_runtime(f, "openvino", cache=cache)
    x = np.ones((1, 3, SIZE, SIZE), np.float32)
    np.testing.assert_allclose(run(x)[0], x + c, rtol=1e-2)
    (entry,) = cache.entries()
    assert (entry / "model.onnx").read_bytes() == f.read_bytes() and list(entry.glob("*.blob"))
    assert not (tmp_path / "home-cache").exists()
    assert len(lines) == 1 and lines[0][0] == "INFO", lines
    assert "compiling encoder.onnx for OpenVINO (first time on this machine" in lines[0][1]
    runtimes.open_runtime(f, "openvino", cache=cache)
    assert len(lines) == 1, lines  # cached: nothing said
    runtimes.open_runtime(f, "openvino", precision="f32", cache=cache)
    assert len(lines) == 2 and len(cache.entries()) == 2  # another precision is another compile


@pytest.fixture
def read_only_dir(tmp_path):
    """A read-only tmpfs (needs root and mount); else a folder under a regular file (mkdir fails alike)."""
    mnt = tmp_path / "ro"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mnt)],
                      capture_output=True).returncode:
        (tmp_path / "file").write_text("")
        yield tmp_path / "file" / "home"
        return
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


@pytest.fixture
def module_log():
    """What export/model_cache.py logs to its own logger (the stage's default, no logger passed)."""
    lg = logging.getLogger("sam2ptq_core.export.model_cache")
    h, level = _Records(), lg.level
    lg.addHandler(h)
    lg.setLevel(logging.INFO)
    try:
        yield h.lines
    finally:
        lg.removeHandler(h)
        lg.setLevel(level)


def test_unwritable_openvino_cache_warns_once_and_compiles_without_it(tmp_path, monkeypatch, read_only_dir,
                                                                     module_log):
    """A read-only HOME (the default cache, as the stage had it: main failed the stage with "[Errno 30]
    Read-only file system: '…/.cache'"): one warning naming the folder, and the file still runs."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(read_only_dir / ".cache"))
    f = tmp_path / "encoder.onnx"
    c = _onnx(f)
    run = runtimes.open_runtime(f, "openvino")
    x = np.zeros((1, 3, SIZE, SIZE), np.float32)
    np.testing.assert_allclose(run(x)[0], c, rtol=1e-2)
    assert [lv for lv, _ in module_log] == ["WARNING"], module_log
    msg = module_log[0][1]
    assert f"cannot write OpenVINO's model cache {read_only_dir / '.cache' / 'sam2ptq' / 'openvino'}" in msg
    assert "compiling without it" in msg and "cache.local" in msg


def _age(p, seconds):
    t = time.time() - seconds
    os.utime(p, (t, t))


def test_openvino_cache_evicts_least_recently_used_entries(tmp_path):
    """Past ``max_bytes`` the least recently used entry goes (entries used within GRACE_S and the one being opened
    are spared): three 48 KiB files at a bound of 2.5 entries keep the two most recent."""
    root = tmp_path / "openvino"
    files = [tmp_path / f"m{i}.onnx" for i in range(3)]
    for i, f in enumerate(files):
        _onnx(f, seed=i)
    runtimes.open_runtime(files[0], "openvino", cache=ModelCache(root, 1 << 30))
    (e0,) = ModelCache(root, 0).entries()
    per_entry = sum(p.stat().st_size for p in e0.iterdir())
    runtimes.open_runtime(files[1], "openvino", cache=ModelCache(root, 1 << 30))
    (e1,) = set(ModelCache(root, 0).entries()) - {e0}
    _age(e0, GRACE_S + 200)  # e0 used before e1, both outside the grace period
    _age(e1, GRACE_S + 100)
    runtimes.open_runtime(files[0], "openvino", cache=ModelCache(root, int(2.5 * per_entry)))  # e0 used again
    assert set(ModelCache(root, 0).entries()) == {e0, e1}  # within the bound: nothing evicted
    _age(e0, GRACE_S + 50)
    runtimes.open_runtime(files[2], "openvino", cache=ModelCache(root, int(2.5 * per_entry)))
    left = ModelCache(root, 0).entries()
    assert e1 not in left and e0 in left and len(left) == 2, left


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_gc_sweeps_the_openvino_cache(tmp_path, monkeypatch):
    """``gc`` removes from <cache.root>/openvino a dead writer's copy, an entry whose compile never finished (older
    than an hour) and least recently used entries past the bound (a tenth of cache.local_max_gb); ``--dry-run``
    lists the same and removes nothing; the newest compiled entry stays."""
    from sam2ptq_core.config import load_config
    from sam2ptq_core.files import _HOST
    from sam2ptq_core.pipeline.gc import collect_garbage
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home-cache"))
    cfg = load_config(None, [f"cache.root={tmp_path / 'c'}", "cache.local_max_gb=0.000001"])  # 107 B: one entry
    root = tmp_path / "c" / "openvino"
    for i in range(2):
        f = tmp_path / f"m{i}.onnx"
        _onnx(f, seed=i)
        runtimes.open_runtime(f, "openvino", cache=ModelCache(root, 1 << 30))
    old, new = sorted(ModelCache(root, 0).entries(), key=lambda p: p.stat().st_mtime)
    _age(old, GRACE_S + 100)
    leftover = new / f".model.onnx.tmp-{_HOST}-{_dead_pid()}-0123abcd"
    leftover.write_bytes(b"partial copy")
    unfinished = root / ("0" * 32 + "-auto-ov0")
    unfinished.mkdir()
    (unfinished / "model.onnx").write_bytes(b"x")
    _age(unfinished, 2 * 3600)
    want = {str(leftover), str(unfinished), str(old)}
    assert set(collect_garbage(cfg, dry_run=True)["local"]) == want
    assert leftover.exists() and unfinished.exists() and old.exists()
    assert set(collect_garbage(cfg)["local"]) == want
    assert ModelCache(root, 0).entries() == [new] and list(new.glob("*.blob"))


def _fake_pair(d, seed: int = 0) -> tuple:
    """Files with the SAM2 pair's interface (names and order; onnx_interface) and trivial bodies: the encoder
    image → image + c, image · c, image − c; the decoder uses every input (a runtime keeps them all) and gives
    masks [N, 3, h, w], iou_predictions [N, 3]. What predict opens, without a SAM2 to export."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from sam2ptq_core.export.onnx_interface import DECODER_INPUTS, ENCODER_OUTPUTS, pair_names
    c = np.random.default_rng(seed).standard_normal((1, 3, SIZE, SIZE)).astype(np.float32)
    shape = [1, 3, SIZE, SIZE]
    v = helper.make_tensor_value_info
    enc = helper.make_graph([helper.make_node(op, ["image", "c"], [o]) for op, o in zip(("Add", "Mul", "Sub"),
                                                                                       ENCODER_OUTPUTS)], "enc",
                            [v("image", TensorProto.FLOAT, shape)],
                            [v(o, TensorProto.FLOAT, shape) for o in ENCODER_OUTPUTS],
                            [numpy_helper.from_array(c, "c")])
    dims = {"point_coords": ["n", "p", 2], "point_labels": ["n", "p"], "mask_input": ["n", 1, SIZE // 4, SIZE // 4],
            "has_mask_input": ["n"]}
    nodes = [helper.make_node("ReduceMean", [i], [f"m{k}"], keepdims=0) for k, i in enumerate(DECODER_INPUTS)]
    nodes += [helper.make_node("Sum", [f"m{k}" for k in range(len(DECODER_INPUTS))], ["s"]),
              helper.make_node("Add", ["mask_input", "s"], ["ms"]),
              helper.make_node("Expand", ["ms", "three4"], ["masks"]),
              helper.make_node("Unsqueeze", ["has_mask_input", "one"], ["h1"]),
              helper.make_node("Add", ["h1", "s"], ["hs"]),
              helper.make_node("Expand", ["hs", "three2"], ["iou_predictions"])]
    consts = [numpy_helper.from_array(np.array(a, np.int64), n)
              for n, a in (("three4", [1, 3, 1, 1]), ("three2", [1, 3]), ("one", [1]))]
    dec = helper.make_graph(nodes, "dec", [v(i, TensorProto.FLOAT, dims.get(i, shape)) for i in DECODER_INPUTS],
                            [v("masks", TensorProto.FLOAT, ["n", 3, SIZE // 4, SIZE // 4]),
                             v("iou_predictions", TensorProto.FLOAT, ["n", 3])], consts)
    names = pair_names("tiny")
    for g, f in ((enc, names["encoder"]), (dec, names["decoder"])):
        onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)], ir_version=10), str(d / f))
    return d / names["encoder"], d / names["decoder"]


def _tree(tmp_path, precision: str, onnx_bytes: bytes | None = None):
    """An output tree with what predict reads: config.yaml (cache.root under tmp_path, its onnx.precision "auto"),
    the onnx/ pair (``_fake_pair``; ``onnx_bytes`` in the encoder's place), onnx/onnx.json recording
    ``precision``."""
    import yaml
    run = tmp_path / "run"
    (run / "onnx").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({
        "model": {"device": "cpu"}, "cache": {"root": str(tmp_path / "c")}, "onnx": {"precision": "auto"},
        "quant": {"calib": {"image_size": SIZE}}}))
    enc, _ = _fake_pair(run / "onnx")
    if onnx_bytes is not None:
        enc.write_bytes(onnx_bytes)
    (run / "onnx" / "onnx.json").write_text(json.dumps({"enabled": True, "runtime": "openvino",
                                                        "precision_setting": precision}))
    return run


class _Stub(torch.nn.Module):
    """Stands in for the quantized SAM2 (its decoder is stubbed too): predict's own steps run for real."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))


@pytest.fixture
def stub_model(monkeypatch):
    import sam2ptq_core.export.reader as reader
    import sam2ptq_core.sam2.evaluation as evaluation
    monkeypatch.setattr(reader, "load_quantized", lambda run, fmt: _Stub())
    monkeypatch.setattr(evaluation, "predict_masks",
                        lambda model, emb, size, hw, points: torch.ones(1, *hw, dtype=torch.bool))


def _predict(run, tmp_path, runtime="openvino"):
    from sam2ptq_core.export.predict import main
    return main(["--run", str(run), "--image", str(ROOT / "examples/images/coffee.jpg"), "--point", "10,10",
                 "--runtime", runtime, "--out", str(tmp_path / "m.png")])


def test_predict_runs_the_file_at_the_precision_it_was_evaluated_with(tmp_path, monkeypatch, capsys, stub_model):
    """onnx.json's precision_setting f32 (the tree's config says auto) reaches OpenVINO: main opened the file at
    "auto" (bf16 float ops on bf16 CPUs), other masks than those reported. The cache is predict's default
    (~/.cache/sam2ptq/openvino) until the run's <cache.root>/openvino exists, then that one; the first compile says
    so on stderr."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home-cache"))
    seen = []
    real = runtimes.open_runtime

    def spy(path, runtime, threads=None, precision="auto", cache=None):
        seen.append((precision, cache.dir if cache else None))
        return real(path, runtime, threads=threads, precision=precision, **({"cache": cache} if cache else {}))
    monkeypatch.setattr(runtimes, "open_runtime", spy)
    run = _tree(tmp_path, "f32")
    assert _predict(run, tmp_path) == 0
    assert seen == [("f32", tmp_path / "home-cache" / "sam2ptq" / "openvino")] * 2  # encoder; the decoder: f32
    err = capsys.readouterr().err
    assert "compiling sam2.1_hiera_tiny.encoder.onnx for OpenVINO (first time on this machine" in err, err
    assert _predict(run, tmp_path) == 0
    assert "compiling" not in capsys.readouterr().err  # cached
    (tmp_path / "c" / "openvino").mkdir(parents=True)  # the pipeline's cache on this machine
    assert _predict(run, tmp_path) == 0
    assert seen[-2:] == [("f32", tmp_path / "c" / "openvino")] * 2
    run = _tree(tmp_path / "auto", "auto")  # the encoder follows the record; the float decoder stays f32
    assert _predict(run, tmp_path) == 0
    assert [p for p, _ in seen[-2:]] == ["auto", "f32"]


@pytest.mark.parametrize("broken", ["truncated", "unknown_op"])
@pytest.mark.parametrize("runtime", ["openvino", "onnxruntime"])
def test_predict_runtime_that_cannot_open_the_file_is_one_line(tmp_path, monkeypatch, capfd, stub_model,
                                                                runtime, broken):
    """A file the runtime cannot read (truncated) or compile (an operator it does not know): one ``error:`` line
    naming the runtime, the file, the reason and the fix, exit code 2, after at most the compile notice (main: the
    runtime's traceback, and OpenVINO's other readers' parse errors on stderr); no cache entry is left behind."""
    pytest.importorskip(runtime)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home-cache"))
    f = tmp_path / "model.onnx"
    _onnx(f, op="Add" if broken == "truncated" else "NoSuchOp")
    run = _tree(tmp_path, "auto", f.read_bytes()[:3000] if broken == "truncated" else f.read_bytes())
    assert _predict(run, tmp_path, runtime) == 2
    out, err = capfd.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    want = f"error: {runtime} cannot open {run / 'onnx' / 'sam2.1_hiera_tiny.encoder.onnx'} ("
    assert lines[-1].startswith(want) and "--runtime fake" in lines[-1], err
    assert all(ln.startswith("compiling sam2.1_hiera_tiny.encoder.onnx for OpenVINO") for ln in lines[:-1]), err
    assert len(lines) <= 2 and "Traceback" not in err and not out
    if runtime == "openvino":
        assert ("is not an ONNX file OpenVINO can read" in lines[-1]) == (broken == "truncated")
        assert "NoSuchOp" in lines[-1] or broken == "truncated"
        assert not ModelCache.default().entries()


@pytest.mark.parametrize("overrides", [[], ["cache.root=s3://b/p"], ["cache.root=s3://b/p", "cache.local=/w/l"]])
def test_run_cache_is_in_the_folder_the_pipeline_keeps_local_state(tmp_path, monkeypatch, overrides):
    """``ModelCache.of_run`` (export/ may not import pipeline/) follows ``stages.local_dir``: cache.root for a local
    root, else cache.local or ~/.cache/sam2ptq; bounded at a tenth of cache.local_max_gb."""
    from sam2ptq_core.config import load_config
    from sam2ptq_core.pipeline.stages import local_dir
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home-cache"))
    cfg = load_config(None, [*overrides, "cache.local_max_gb=20"])
    got = ModelCache.of_run(cfg.cache)
    assert got.dir == local_dir(cfg) / "openvino" and got.max_bytes == 2 * 2**30
