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
