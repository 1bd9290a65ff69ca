import math

import torch

from sam2ptq_core.algorithms.metrics import cosine, mask_iou, sqnr_db
from sam2ptq_core.sam2.evaluation import evaluate_image, masks_to_boxes, point_grid
from sam2ptq_core.sam2.loading import build_random
from tests.helpers import ARCH


def test_sqnr_and_cosine_known_values():
    ref = torch.ones(100, dtype=torch.float64)
    assert abs(sqnr_db(ref, ref + 0.1) - 20.0) < 1e-9
    assert math.isinf(sqnr_db(ref, ref))
    assert abs(cosine(torch.tensor([1.0, 0]), torch.tensor([1.0, 1])) - 2 ** -0.5) < 1e-12


def test_mask_iou_and_boxes():
    a = torch.zeros(2, 4, 4, dtype=torch.bool)
    b = a.clone()
    a[0, :2, :2] = True
    b[0, :2, :] = True
    iou = mask_iou(a, b)
    assert iou.tolist() == [0.5, 1.0]  # the second pair is empty/empty: agreement
    boxes, keep = masks_to_boxes(b)
    assert keep.tolist() == [True, False] and boxes[0].tolist() == [0, 0, 4, 2]


def test_point_grid_centres():
    p = point_grid(100, 50, 2)
    assert p.tolist() == [[25, 12.5], [75, 12.5], [25, 37.5], [75, 37.5]]


def test_identical_models_agree_perfectly():
    m = build_random("tiny", 0, 128, ARCH)
    x = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    ev = evaluate_image(m, m, x, (90, 120), 128, 2)
    assert all(math.isinf(v) for v in ev.sqnr.values())
    assert ev.point_iou.tolist() == [1.0] * 4 and ev.fp_masks.shape == (4, 90, 120)


def test_perturbed_model_scores_match_an_independent_computation():
    """A float model against a copy with noisy trunk weights: SQNR and cosine per level equal a numpy computation
    on the two models' embeddings, and the mask IoU of each point prompt equals a numpy IoU of the two masks."""
    import copy

    import numpy as np

    from sam2ptq_core.sam2.evaluation import predict_masks
    fp = build_random("tiny", 0, 128, ARCH)
    q = copy.deepcopy(fp)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in q.vision_encoder.backbone.parameters():
            p.add_(0.2 * p.std() * torch.randn(p.shape, generator=g))
    x = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    ev = evaluate_image(fp, q, x, (90, 120), 128, 2)
    with torch.inference_mode():
        a = [t.double().numpy() for t in fp.get_image_embeddings(x)]
        b = [t.double().numpy() for t in q.get_image_embeddings(x)]
    for name, ra, rb in zip(("fpn0", "fpn1", "embedding"), a, b):
        want = 10 * np.log10((ra ** 2).sum() / ((ra - rb) ** 2).sum())
        assert abs(ev.sqnr[name] - want) < 1e-6, name  # measured 0 (SQNR 13.7, 12.3, 6.1 dB)
        cos = (ra * rb).sum() / np.sqrt((ra ** 2).sum() * (rb ** 2).sum())
        assert abs(ev.cos[name] - cos) < 1e-9
    assert 0 < ev.sqnr["embedding"] < 60  # a real difference, not a model compared with itself
    pts = point_grid(120, 90, 2)
    with torch.inference_mode():
        fm = predict_masks(fp, fp.get_image_embeddings(x), 128, (90, 120), points=pts).numpy()
        qm = predict_masks(q, q.get_image_embeddings(x), 128, (90, 120), points=pts).numpy()
    inter, union = (fm & qm).sum((1, 2)), (fm | qm).sum((1, 2))
    want_iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    assert np.allclose(ev.point_iou.numpy(), want_iou, atol=1e-12)
