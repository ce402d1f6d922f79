"""Reconstruction baselines: visible mean, global mean, Gaussian normalised convolution, sigma chosen on data."""

from __future__ import annotations

import pytest
import torch

from maskseg_monai.masking import generate_patch_mask, patch_mask_to_image
from maskseg_monai.metrics import region_psnr
from maskseg_monai.metrics.baselines import baseline_fill, choose_sigma, gaussian_fill, visible_mean_fill


def smooth_images(spatial=(32, 32), batch=2):
    axes = torch.meshgrid(*[torch.linspace(0, 1, s) for s in spatial], indexing="ij")
    ramp = sum(axes) / len(axes)
    x = torch.stack([ramp, (ramp * 6.28).sin() * 0.5 + 0.5])[None].repeat(batch, 1, *([1] * len(spatial)))
    return x * torch.linspace(0.5, 1.0, batch).reshape(-1, 1, *([1] * len(spatial)))


def masks(spatial, patch=4, ratio=0.5, batch=2):
    grid = [s // patch for s in spatial]
    pm = generate_patch_mask(batch, int(torch.tensor(grid).prod()), ratio, generator=torch.Generator().manual_seed(0))
    return patch_mask_to_image(pm.mask, patch, spatial)


@pytest.mark.parametrize("spatial", [(32, 32), (16, 16, 16)])
def test_fills_keep_visible_pixels_and_interpolation_beats_the_mean(spatial):
    x, m = smooth_images(spatial), masks(spatial)
    for fill in (
        visible_mean_fill(x, m),
        gaussian_fill(x, m, 2.0),
        baseline_fill("global_mean", x, m, global_mean=[0.5, 0.5]),
    ):
        assert fill.shape == x.shape
        assert torch.equal(fill * (1 - m), x * (1 - m))
    mean_psnr = region_psnr(visible_mean_fill(x, m), x, m).mean()
    interp_psnr = region_psnr(gaussian_fill(x, m, 2.0), x, m).mean()
    assert interp_psnr > mean_psnr + 10, (float(mean_psnr), float(interp_psnr))


def test_visible_mean_is_the_mean_of_visible_pixels():
    x = torch.zeros(1, 1, 4, 4)
    x[..., :2, :] = 1.0  # top half 1, bottom half 0
    m = torch.zeros(1, 1, 4, 4)
    m[..., 0, :2] = 1  # two masked pixels of the top half
    fill = visible_mean_fill(x, m)
    assert torch.allclose(fill[0, 0, 0, :2], torch.full((2,), 6 / 14))


def test_choose_sigma_follows_the_hole_size():
    x = smooth_images((64, 64))
    small, large = masks((64, 64), patch=2, ratio=0.25), masks((64, 64), patch=16, ratio=0.5)
    assert choose_sigma(x, small) <= choose_sigma(x, large)
    assert choose_sigma(x, small, sigmas=(3.0,)) == 3.0


def test_bad_arguments():
    x, m = smooth_images(), masks((32, 32))
    with pytest.raises(ValueError, match="pixel mask"):
        visible_mean_fill(x, m[:, :, :16])
    with pytest.raises(ValueError, match="sigma must be > 0"):
        gaussian_fill(x, m, 0)
    with pytest.raises(ValueError, match="needs sigma"):
        baseline_fill("gaussian", x, m)
    with pytest.raises(ValueError, match="global_mean"):
        baseline_fill("global_mean", x, m)
    with pytest.raises(ValueError, match="gaussian"):
        baseline_fill("interp", x, m)


def test_baseline_metric_scores_the_fill_on_the_network_masks():
    from maskseg_monai.handlers import ReconstructionMetricHandler
    from maskseg_monai.metrics import BaselineReconstructionMetric

    x, m = smooth_images(), masks((32, 32))
    output = torch.cat([torch.rand_like(x), m], 1)  # a network output: a (random) reconstruction, then the mask
    metric = BaselineReconstructionMetric("psnr_masked", "visible_mean")
    metric(output, x)
    expected = region_psnr(visible_mean_fill(x, m), x, m).mean()
    assert torch.allclose(metric.aggregate(), expected)
    interp = BaselineReconstructionMetric("psnr_masked", "gaussian", sigma=2.0)
    interp(output, x)
    assert float(interp.aggregate()) > float(expected) + 10
    with pytest.raises(ValueError, match="needs sigma"):
        BaselineReconstructionMetric("psnr_masked", "gaussian")
    handler = ReconstructionMetricHandler("psnr_masked", 4, fill="gaussian", sigma=2.0)
    assert isinstance(handler.metric_fn, BaselineReconstructionMetric) and handler.metric_fn.sigma == 2.0


def test_fit_baselines_picks_sigma_on_the_given_masks_and_logs_it(caplog):
    from maskseg_monai.metrics import fit_baselines

    x = smooth_images((32, 32), batch=4)
    with caplog.at_level("INFO", logger="maskseg_monai.baselines"):
        fitted = fit_baselines(x, patch_size=4, mask_ratio=0.5, seed=3, sigmas=(1.0, 2.0, 8.0))
    assert fitted["sigma"] in (1.0, 2.0, 8.0) and fitted["num_images"] == 4
    assert fitted["global_mean"] == pytest.approx(x.mean(dim=(0, 2, 3)).tolist())
    generator = torch.Generator().manual_seed(3)
    mask = patch_mask_to_image(generate_patch_mask(4, 64, 0.5, generator=generator).mask, 4, (32, 32))
    assert fitted["sigma"] == choose_sigma(x, mask, (1.0, 2.0, 8.0))
    assert "gaussian sigma" in caplog.text and "4 training crops" in caplog.text
    with pytest.raises(ValueError, match="training images"):
        fit_baselines(x[:0], 4, 0.5)
