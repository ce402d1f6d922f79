"""Support-aware one-shot baselines: Otsu on the support's side, copy-support, body, all pixels."""

from __future__ import annotations

import pytest
import torch

from maskseg_monai.metrics.oneshot_baselines import copy_support_baseline, oneshot_baselines, otsu_baseline


def _disk(size: int, cx: float, cy: float, r: float) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return (((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r).float()


def _scene(bright_disk: bool, cx: float) -> tuple[torch.Tensor, torch.Tensor]:
    disk = _disk(32, cx, 16, 6)
    image = 0.2 + 0.6 * disk if bright_disk else 0.8 - 0.6 * disk
    return image[None] + 0.01 * torch.rand(1, 32, 32), disk[None]


@pytest.mark.parametrize("bright", [True, False])
def test_otsu_keeps_the_side_of_the_support_mask(bright):
    s_img, s_mask = _scene(bright, 10)
    q_img, q_mask = _scene(bright, 22)
    pred = otsu_baseline(q_img[None], s_img[None, None], s_mask[None, None])
    assert pred.shape == (1, 1, 32, 32)
    assert torch.equal(pred[0], q_mask)  # the disk, bright or dark, not its complement


def test_otsu_segmenting_the_background_class_picks_the_other_side():
    s_img, s_mask = _scene(True, 10)
    q_img, q_mask = _scene(True, 22)
    pred = otsu_baseline(q_img[None], s_img[None, None], 1 - s_mask[None, None])
    assert torch.equal(pred[0], 1 - q_mask)


def test_copy_support_resizes_and_takes_the_shots_majority():
    masks = torch.zeros(1, 3, 1, 8, 8)
    masks[0, :2, 0, :4] = 1  # two shots: top half; one shot: bottom half
    masks[0, 2, 0, 4:] = 1
    pred = copy_support_baseline(torch.zeros(1, 1, 16, 16), masks)
    assert pred.shape == (1, 1, 16, 16)
    assert pred[0, 0, :8].all() and not pred[0, 0, 8:].any()


def test_named_baselines_and_errors():
    q, s, m = torch.rand(2, 1, 8, 8), torch.rand(2, 1, 1, 8, 8), (torch.rand(2, 1, 1, 8, 8) > 0.5).float()
    body = torch.zeros(2, 1, 8, 8)
    body[:, :, 2:6, 2:6] = 1
    out = oneshot_baselines(["all_pixels", "body", "otsu", "copy_support"], q, s, m, body)
    assert out["all_pixels"].sum() == 2 * 64 and torch.equal(out["body"], body)
    assert all(v.shape == (2, 1, 8, 8) for v in out.values())
    with pytest.raises(ValueError, match="needs a body mask"):
        oneshot_baselines(["body"], q, s, m)
    with pytest.raises(ValueError, match="unknown one-shot baseline 'otsu2'"):
        oneshot_baselines(["otsu2"], q, s, m)
