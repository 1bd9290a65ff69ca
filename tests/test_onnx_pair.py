"""The SAM2 apps' ONNX pair (issue 29) on the reduced float model at 128²: the decoder file computes what
transformers' ``Sam2Model.forward(image_embeddings=…, multimask_output=True)`` computes, for points (positive,
negative), boxes (labels 2/3), both, several prompts at once (N, P dynamic) and a mask prompt; the torch-free
predictor's preprocessing and upsampling equal the torch pipeline's, and its masks the torch path's."""
import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="the '.[onnx]' extra (scripts/setup.sh installs it)")

from PIL import Image  # noqa: E402

from sam2ptq_core.export.onnx_interface import DECODER_INPUTS, ENCODER_OUTPUTS  # noqa: E402
from sam2ptq_core.export.onnx_predictor import (  # noqa: E402
    MEAN,
    STD,
    OnnxSam2,
    Prompt,
    best_mask,
    preprocess,
    upsample_bilinear,
)
from sam2ptq_core.export.predict import torch_prompt_masks  # noqa: E402
from sam2ptq_core.export.runtimes import available_runtimes, open_runtime  # noqa: E402
from sam2ptq_core.sam2 import images  # noqa: E402
from tests.helpers import ARCH, ROOT  # noqa: E402

S = 128
PHOTOS = ["coffee.jpg", "astronaut.jpg", "chelsea.jpg"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(float Sam2Model, encoder.onnx, decoder.onnx): the reduced model's float encoder and decoder files."""
    from sam2ptq_core.export.onnx_decoder import export_decoder
    from sam2ptq_core.export.onnx_graph import export_float
    from sam2ptq_core.sam2.loading import build_random
    d = tmp_path_factory.mktemp("pair")
    m = build_random("tiny", 7, S, ARCH).eval()
    export_float(d / "encoder.onnx", m, S)
    export_decoder(d / "decoder.onnx", m, S, {"random_weights": "true"})
    return m, d / "encoder.onnx", d / "decoder.onnx"


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    u = np.logical_or(a, b).sum()
    return 1.0 if u == 0 else float(np.logical_and(a, b).sum() / u)


def test_numpy_preprocessing_and_upsampling_equal_the_torch_pipelines():
    """``preprocess`` = ``images.normalize(images.resize_uint8(…))`` (measured max |Δ| 0 on three photos: same PIL
    resize, same float32 ops); ``upsample_bilinear`` = F.interpolate(bilinear, align_corners=False) up and down
    (measured ≤ 5.2e-6 on N(0, 1) logits: float32 rounding of the source index)."""
    assert tuple(MEAN.tolist()) == pytest.approx(images.MEAN) and tuple(STD.tolist()) == pytest.approx(images.STD)
    for name in PHOTOS:
        im = images.load_rgb(ROOT / "examples/images" / name)
        want = images.normalize(images.resize_uint8(im, S))[None].numpy()
        assert np.abs(preprocess(im, S) - want).max() == 0, name
    x = torch.randn(32, 32, generator=torch.Generator().manual_seed(0))
    for hw in ((375, 500), (128, 128), (21, 40)):
        want = torch.nn.functional.interpolate(x[None, None], size=hw, mode="bilinear", align_corners=False)[0, 0]
        assert np.abs(upsample_bilinear(x.numpy(), *hw) - want.numpy()).max() < 1e-5, hw


PROMPTS = {  # in the 128² frame; (coords [N, P, 2], labels [N, P])
    "one positive": ([[[40.0, 70.0]]], [[1]]),
    "positive + negative": ([[[40.0, 70.0], [90.0, 20.0]]], [[1, 0]]),
    "box": ([[[10.0, 20.0], [100.0, 110.0]]], [[2, 3]]),
    "points + box": ([[[60.0, 60.0], [5.0, 5.0], [10.0, 20.0], [100.0, 110.0]]], [[1, 0, 2, 3]]),
    "3 prompts, padded": ([[[1.0, 2.0], [30.0, 40.0], [0.0, 0.0]], [[64.0, 64.0], [70.0, 10.0], [5.0, 120.0]],
                           [[10.0, 20.0], [100.0, 110.0], [0.0, 0.0]]], [[1, 1, -1], [1, 0, 0], [2, 3, -1]]),
}


def _torch_decoder(m, emb, coords, labels, mask=None):
    """transformers' own path: the N prompts as the point batch of one image."""
    with torch.no_grad():
        out = m(image_embeddings=emb, input_points=coords[None], input_labels=labels[None].long(),
                input_masks=mask, multimask_output=True)
    return out.pred_masks[0].numpy(), out.iou_scores[0].numpy()


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_decoder_file_is_sam2models_prompt_encoder_and_mask_decoder(pair, runtime):
    """Measured max |Δ| against torch float32 (ONNX Runtime / OpenVINO f32): logits 1.6e-8 / 3e-7 on logits of
    |x| ≤ 0.03 (random weights), IoU predictions 6e-8 / 3e-7; bound 1e-5 relative to the largest logit."""
    if runtime not in available_runtimes():
        pytest.skip(f"{runtime} is not installed")
    m, enc_f, dec_f = pair
    dec = open_runtime(dec_f, runtime, precision="f32")
    assert dec.has_interface(DECODER_INPUTS, ["masks", "iou_predictions"])
    x = images.normalize(images.resize_uint8(images.load_rgb(ROOT / "examples/images/coffee.jpg"), S))[None]
    with torch.no_grad():
        emb = m.get_image_embeddings(x)
    feats = [e.numpy() for e in (emb[2], emb[0], emb[1])]
    for what, (c, lab) in PROMPTS.items():
        coords, labels = torch.tensor(c), torch.tensor(lab, dtype=torch.float32)
        n = coords.shape[0]
        want_m, want_i = _torch_decoder(m, emb, coords, labels)
        got_m, got_i = dec(*feats, coords.numpy(), labels.numpy(), np.zeros((n, 1, S // 4, S // 4), np.float32),
                           np.zeros(n, np.float32))
        assert got_m.shape == (n, 3, S // 4, S // 4) and got_i.shape == (n, 3), what
        scale = np.abs(want_m).max()
        assert np.abs(got_m - want_m).max() <= 1e-5 * scale, (what, np.abs(got_m - want_m).max(), scale)
        assert np.abs(got_i - want_i).max() <= 1e-5 * max(np.abs(want_i).max(), 1), what
    # a mask prompt (has_mask_input = 1) is transformers' input_masks at the low resolution
    coords, labels = torch.tensor(PROMPTS["one positive"][0]), torch.tensor([[1.0]])
    mask = torch.randn(1, 1, S // 4, S // 4, generator=torch.Generator().manual_seed(1))
    want_m, _ = _torch_decoder(m, emb, coords, labels, mask)
    got_m, _ = dec(*feats, coords.numpy(), labels.numpy(), mask.numpy(), np.ones(1, np.float32))
    assert np.abs(got_m - want_m).max() <= 1e-5 * np.abs(want_m).max()
    no_mask, _ = dec(*feats, coords.numpy(), labels.numpy(), mask.numpy(), np.zeros(1, np.float32))
    assert np.abs(no_mask - want_m).max() > 1e-3 * np.abs(want_m).max()  # has_mask_input = 0 ignores it


def test_encoder_file_is_get_image_embeddings_in_the_apps_order(pair):
    """Names and order of the drop-in interface; values = get_image_embeddings (measured max |Δ| 6.6e-7). The
    position embedding's bicubic Resize is not in the graph (MatMuls by the interpolation of the identity instead:
    ``separable_position_embedding``): OpenVINO folds that Resize at compile time with a slow reference kernel
    (36.6 s to compile the 512² tiny encoder with it, 0.7 s without)."""
    import onnx
    m, enc_f, _ = pair
    g = onnx.load(str(enc_f)).graph
    const = {i.name for i in g.initializer} | {""}
    for n in g.node:
        if set(n.input) <= const:
            const.update(n.output)
    folded = [n.op_type for n in g.node if set(n.input) <= const]
    assert "Resize" not in folded and "MatMul" in folded, folded
    enc = open_runtime(enc_f, "onnxruntime")
    assert enc.has_interface(["image"], ENCODER_OUTPUTS) and enc.input_shape == [1, 3, S, S]
    x = torch.randn(1, 3, S, S, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = m.get_image_embeddings(x)
    got = enc(x.numpy())
    assert [g.shape for g in got] == [(1, 32, S // 4, S // 4), (1, 64, S // 8, S // 8), (1, 256, S // 16, S // 16)]
    for g, w in zip(got, want):
        assert np.abs(g - w.numpy()).max() < 1e-5


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_predictor_masks_equal_the_torch_sam2model_path(pair, runtime):
    """The torch-free predictor (float encoder) against ``predict.torch_prompt_masks`` (Sam2Model.forward +
    the same mask rule) on three photos × four prompts: measured IoU 1.0 on every one (ONNX Runtime; OpenVINO
    f32 encoder ≥ 0.999); bound 0.99 (issue 29)."""
    if runtime not in available_runtimes():
        pytest.skip(f"{runtime} is not installed")
    m, enc_f, dec_f = pair
    sam = OnnxSam2(enc_f, dec_f, runtime, precision="f32")
    assert sam.size == S
    ious = []
    for name in PHOTOS:
        im = images.load_rgb(ROOT / "examples/images" / name)
        w, h = im.size
        sam.set_image(im)
        with torch.no_grad():
            emb = m.get_image_embeddings(images.normalize(images.resize_uint8(im, S))[None])
        for prompt in (Prompt([(w * 0.3, h * 0.6)], [1]), Prompt([(w * 0.5, h * 0.5), (w * 0.1, h * 0.9)], [1, 0]),
                       Prompt(box=(w * 0.2, h * 0.2, w * 0.8, h * 0.7)),
                       Prompt([(w * 0.4, h * 0.4)], [0], box=(w * 0.1, h * 0.1, w * 0.6, h * 0.9))):
            got = sam.predict(prompt)
            want, logits, iou = torch_prompt_masks(m, emb, S, (h, w), prompt)
            assert got.mask.shape == (h, w)
            ious.append(_iou(got.mask, want))
    assert min(ious) >= 0.99, ious


def test_predict_says_random_weights_as_the_report_does():
    from sam2ptq_core.export.predict import BANNER
    from sam2ptq_core.export.report import RANDOM_BANNER
    assert BANNER == RANDOM_BANNER


def test_prompt_arrays_and_best_mask():
    """Points then box corners (labels 2, 3) scaled to the S frame; the mask is the highest predicted IoU's."""
    c, lab = Prompt([(50.0, 20.0)], [0], box=(10.0, 10.0, 90.0, 30.0)).arrays(100, 40, 128)
    assert c.shape == (1, 3, 2) and lab.tolist() == [[0.0, 2.0, 3.0]]
    assert c[0, 0].tolist() == pytest.approx([64.0, 64.0]) and c[0, 2].tolist() == pytest.approx([115.2, 96.0])
    masks = np.stack([np.full((4, 4), -1.0), np.full((4, 4), 1.0), np.full((4, 4), -1.0)])
    mask, k = best_mask(masks, np.array([0.1, 0.9, 0.5]), 8, 8)
    assert k == 1 and mask.all()
    with pytest.raises(ValueError, match="at least one point or a box"):
        Prompt().arrays(10, 10, 128)


def test_a_foreign_onnx_file_is_one_line(pair, tmp_path):
    """The old encoder interface (pixel_values → fpn0, …) or a decoder in the encoder's place is refused by name."""
    _, enc_f, dec_f = pair
    with pytest.raises(ValueError, match=r"is not a SAM2 encoder in the apps' interface"):
        OnnxSam2(dec_f, dec_f)
    im = Image.new("RGB", (64, 48))
    sam = OnnxSam2(enc_f, dec_f)
    with pytest.raises(ValueError, match="set_image first"):
        sam.predict(Prompt([(1.0, 1.0)], [1]))
    assert sam.set_image(im) > 0
