"""Small-object segmentation evaluation on hand-built masks with exactly known answers."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

from maskseg_monai.metrics import (
    evaluate_segmentation,
    object_metrics,
    size_bucket_names,
    summarize_metrics,
    write_metrics_csv,
)


def scene_2d() -> tuple[np.ndarray, np.ndarray]:
    """GT: a 2x2 (4 px), a 4x4 (16 px) and a 9x9 (81 px) object; prediction: the 2x2 exactly, half of the 4x4
    (2x4 = 8 px), the 9x9 grown by one column (90 px), and a 1x3 false positive."""
    gt = np.zeros((32, 32), bool)
    gt[1:3, 1:3] = True  # small, 4 px
    gt[10:14, 10:14] = True  # medium, 16 px
    gt[20:29, 20:29] = True  # large, 81 px
    pred = np.zeros_like(gt)
    pred[1:3, 1:3] = True  # exact
    pred[10:12, 10:14] = True  # 8 of 16 px: IoU 0.5
    pred[20:29, 20:30] = True  # 90 px: IoU 81/90
    pred[5, 25:28] = True  # false positive, 3 px
    return pred, gt


def test_bucket_names():
    assert size_bucket_names() == ["lt16", "16to64", "ge64"]
    assert size_bucket_names((5,)) == ["lt5", "ge5"]
    with pytest.raises(ValueError, match="strictly increasing"):
        size_bucket_names((64, 16))


def test_object_metrics_2d_exact():
    pred, gt = scene_2d()
    m = object_metrics(pred, gt)
    assert (m["n_gt"], m["n_pred"]) == (3, 4)
    assert (m["n_gt_lt16"], m["n_gt_16to64"], m["n_gt_ge64"]) == (1, 1, 1)  # 16 px is in [16, 64)
    assert m["dice_lt16"] == 1.0
    assert m["dice_16to64"] == pytest.approx(2 * 8 / (16 + 8))
    assert m["dice_ge64"] == pytest.approx(2 * 81 / (81 + 90))
    # IoU 1, 0.5, 0.9 all >= 0.5: every object found; the false positive is unmatched
    assert m["recall"] == 1.0 and m["precision"] == 0.75
    assert m["f1"] == pytest.approx(2 * 0.75 / 1.75)
    assert m["recall_16to64"] == 1.0


def test_iou_threshold_and_any_overlap():
    pred, gt = scene_2d()
    strict = object_metrics(pred, gt, iou_threshold=0.6)  # the half-found medium object no longer counts
    assert strict["recall"] == pytest.approx(2 / 3) and strict["precision"] == 0.5
    assert strict["recall_16to64"] == 0.0 and strict["recall_lt16"] == 1.0
    # any overlap: one predicted blob covering two GT objects detects both
    gt2 = np.zeros((8, 8), bool)
    gt2[1, 1:3] = True
    gt2[1, 4:6] = True
    pred2 = np.zeros_like(gt2)
    pred2[1, 1:6] = True
    anyo = object_metrics(pred2, gt2, iou_threshold=0.0)
    assert (anyo["recall"], anyo["precision"]) == (1.0, 1.0)
    half = object_metrics(pred2, gt2)  # IoU 2/5 each
    assert (half["recall"], half["precision"], half["f1"]) == (0.0, 0.0, 0.0)
    # bucket Dice counts the whole merging component: 2 * 4 / (4 + 5)
    assert half["dice_lt16"] == pytest.approx(8 / 9)


def test_connectivity():
    gt = np.zeros((6, 6), bool)
    gt[1, 1] = gt[2, 2] = True  # diagonal neighbours
    assert object_metrics(gt, gt)["n_gt"] == 2
    assert object_metrics(gt, gt, connectivity=2)["n_gt"] == 1
    with pytest.raises(ValueError, match="connectivity"):
        object_metrics(gt, gt, connectivity=3)


def test_empty_cases():
    empty = np.zeros((8, 8), bool)
    one = empty.copy()
    one[2:4, 2:4] = True
    m = object_metrics(empty, empty)
    assert all(math.isnan(m[k]) for k in ("precision", "recall", "f1", "dice_lt16"))
    missed = object_metrics(empty, one)
    assert missed["recall"] == 0.0 and math.isnan(missed["precision"]) and missed["f1"] == 0.0
    assert missed["dice_lt16"] == 0.0 and math.isnan(missed["dice_ge64"])
    false_pos = object_metrics(one, empty)
    assert false_pos["precision"] == 0.0 and math.isnan(false_pos["recall"]) and false_pos["f1"] == 0.0


def test_object_metrics_3d_exact():
    gt = np.zeros((16, 16, 16), bool)
    gt[1:3, 1:3, 1:3] = True  # 8 voxels
    gt[6:11, 6:11, 6:11] = True  # 125 voxels
    pred = np.zeros_like(gt)
    pred[6:11, 6:11, 6:10] = True  # 100 of 125: IoU 0.8; the small object is missed
    m = object_metrics(torch.as_tensor(pred), torch.as_tensor(gt))
    assert (m["n_gt_lt16"], m["n_gt_ge64"], m["n_pred"]) == (1, 1, 1)
    assert m["dice_lt16"] == 0.0 and m["recall_lt16"] == 0.0
    assert m["dice_ge64"] == pytest.approx(200 / 225) and m["recall_ge64"] == 1.0
    assert (m["recall"], m["precision"]) == (0.5, 1.0)
    assert math.isnan(m["dice_16to64"])
    with pytest.raises(ValueError, match="same shape"):
        object_metrics(pred[0], gt)


def one_hot(labels: np.ndarray, n: int) -> torch.Tensor:
    """Integer maps ``[B, *spatial]`` to one-hot ``[B, n, *spatial]``."""
    return torch.nn.functional.one_hot(torch.as_tensor(labels).long(), n).movedim(-1, 1).float()


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_evaluate_segmentation_multiclass(spatial_dims):
    shape = (12,) * spatial_dims
    y = np.zeros((2, *shape), np.int64)
    y[0][(slice(1, 3),) * spatial_dims] = 1  # class 1: 4 px (2D) / 8 voxels (3D)
    y[0][(slice(5, 9),) * spatial_dims] = 2  # class 2: 16 px / 64 voxels
    p = y.copy()
    p[0][(slice(5, 7), *(slice(5, 9),) * (spatial_dims - 1))] = 0  # class 2 loses half its pixels
    # image 1: no ground truth, a false positive of class 1
    p[1][(slice(0, 1),) * spatial_dims] = 1
    rows = evaluate_segmentation(one_hot(p, 3), one_hot(y, 3), class_names=["bg", "cell", "platelet"])
    r0, r1 = rows
    assert r0["dice_cell"] == 1.0 and r0["dice_platelet"] == pytest.approx(2 / 3)
    assert r0["dice"] == pytest.approx((1 + 2 / 3) / 2)
    assert r0["dice_cell_lt16"] == 1.0 and r0["recall_platelet"] == 1.0  # IoU exactly 0.5
    big = "16to64" if spatial_dims == 2 else "ge64"
    assert r0[f"dice_platelet_{big}"] == pytest.approx(2 / 3) and r0[f"dice_{big}"] == pytest.approx(2 / 3)
    assert "dice_bg" not in r0
    assert math.isnan(r1["dice_cell"]) and r1["precision_cell"] == 0.0 and r1["f1_cell"] == 0.0
    assert math.isnan(r1["recall"]) and math.isnan(r1["precision_platelet"])
    summary = summarize_metrics(rows)
    assert summary["n_gt_cell"] == 1 and summary["n_pred_cell"] == 2 and summary["precision_cell"] == 0.5
    with pytest.raises(ValueError, match="same shape"):
        evaluate_segmentation(one_hot(p, 3), one_hot(y, 4))


def test_write_metrics_csv(tmp_path):
    pred, gt = scene_2d()
    rows = evaluate_segmentation(one_hot(pred[None], 2), one_hot(gt[None], 2))
    rows.append({"dice": float("nan")})
    path = write_metrics_csv(rows, tmp_path / "eval" / "per_image.csv", ids=["a.png", "b.png"])
    with open(path) as f:
        table = list(csv.DictReader(f))
    assert [r["filename"] for r in table] == ["a.png", "b.png"]
    assert float(table[0]["precision_1"]) == 0.75 and table[0]["n_gt_1"] == "3"
    assert table[1]["dice"] == "nan" and table[1]["n_gt_1"] == "nan"
    assert list((tmp_path / "eval").iterdir()) == [tmp_path / "eval" / "per_image.csv"]
    with pytest.raises(ValueError, match="ids"):
        write_metrics_csv(rows, tmp_path / "x.csv", ids=["a"])
