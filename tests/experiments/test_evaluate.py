"""Evaluation of one cell: the model beside the no-learning fills on the same masks, baselines fitted on training
crops, and the small-object region fixed in pixels."""

from __future__ import annotations

import math

import pytest
import torch

from maskseg_monai.experiments import evaluate, read_bundle, train_cell, validation_set
from maskseg_monai.experiments.runner import bundle_config_file
from maskseg_monai.inferers import SeededMaskInferer
from maskseg_monai.metrics import DEFAULT_SIGMAS, reconstruct_image, region_psnr, small_object_mask
from maskseg_monai.networks import AMLPMaskedAutoencoder, MaskedAutoencoderViT

TINY = {
    "hidden_size": 48, "mlp_dim": 96, "num_layers": 1, "num_heads": 4,
    "decoder_hidden_size": 48, "decoder_mlp_dim": 96, "decoder_num_layers": 1, "decoder_num_heads": 4,
}  # fmt: skip
BUDGET = {"steps_per_epoch": 2, "batch_size": 4, "img_size": 32}
BASELINES = {"sigma": 2.0, "global_mean": [0.4]}


def _net(patch_size: int = 8) -> MaskedAutoencoderViT:
    return MaskedAutoencoderViT(1, 32, patch_size, spatial_dims=2, mask_ratio=0.5, **TINY)


def _scene(n: int = 3) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Smooth images with a 9 px object (class 2), a 4 px object (class 1) and a 100 px object (class 1)."""
    axes = torch.meshgrid(torch.linspace(0, 1, 32), torch.linspace(0, 1, 32), indexing="ij")
    images, labels = [], []
    for i in range(n):
        y = torch.zeros(1, 32, 32)
        y[0, 2:5, 2 + i : 5 + i] = 2  # 9 px
        y[0, 20:22, 3:5] = 1  # 4 px
        y[0, 10:20, 15:25] = 1  # 100 px
        x = (0.3 + 0.4 * (axes[0] + axes[1]) / 2)[None] + 0.3 * (y > 0)
        images.append(x.clamp(0, 1))
        labels.append(y)
    return images, labels


def test_columns_and_gains_are_model_minus_fill_on_the_same_masks():
    net, (images, labels) = _net(), _scene()
    out = evaluate.evaluate_cell(
        net, images, labels, {0: "background", 1: "a", 2: "b"}, seed=3, small_area=64, baselines=BASELINES,
        batch_size=8, lesion_classes=[1],
    )  # fmt: skip
    scored = ("psnr_masked", "psnr_masked_small", "psnr_masked_lesion")
    for metric in scored:
        fills, gains = evaluate.baseline_columns(metric)
        assert set(fills + gains + [metric]) <= set(out)
        for fill, gain in zip(fills, gains):
            assert math.isfinite(out[fill]) and out[gain] == pytest.approx(out[metric] - out[fill], abs=1e-9)
    assert set(evaluate.BASELINE_METRICS + evaluate.GAIN_METRICS + evaluate.LESION_METRICS) <= set(out)
    assert out["gaussian_sigma"] == 2.0

    # an independent computation of the fills on the masks the model saw
    x, y = torch.stack(images), torch.stack(labels)
    with torch.no_grad():
        recon, _, m = reconstruct_image(SeededMaskInferer(3)(x, net.eval()), x, 8)
    visible = 1 - m
    image_mean = (x * visible).sum((2, 3), keepdim=True) / visible.sum((2, 3), keepdim=True)
    small = m * small_object_mask(y, 64, dilation=2)
    assert out["visible_mean_psnr_masked"] == pytest.approx(float(region_psnr(image_mean.expand_as(x), x, m).mean()))
    assert out["global_mean_psnr_masked_small"] == pytest.approx(
        float(region_psnr(torch.full_like(x, 0.4), x, small).nanmean())
    )
    assert out["psnr_masked_small"] == pytest.approx(float(region_psnr(recon, x, small).nanmean()))
    # smooth images: interpolation beats the image mean
    assert out["gaussian_psnr_masked"] > out["visible_mean_psnr_masked"]


def test_without_labels_region_baselines_are_nan():
    images, _ = _scene(2)
    out = evaluate.evaluate_cell(_net(), images, None, {}, 0, 64, BASELINES)
    assert math.isfinite(out["gain_gaussian_psnr_masked"])
    assert all(math.isnan(out[k]) for k in (*evaluate.baseline_columns("psnr_masked_small")[1], "psnr_masked_small"))


def test_baselines_must_be_fitted():
    images, labels = _scene(1)
    with pytest.raises(ValueError, match=r"baselines lacks \['sigma'\].*training crops"):
        evaluate.evaluate_cell(_net(), images, labels, {}, 0, 64, {"global_mean": [0.5]})


@pytest.mark.parametrize("patch_size", [8, 16])
def test_small_object_region_is_fixed_in_pixels_whatever_the_patch(patch_size, monkeypatch):
    seen = []
    real = evaluate.small_object_mask

    def spy(*args, **kwargs):
        seen.append((args, kwargs, real(*args, **kwargs)))
        return seen[-1][2]

    monkeypatch.setattr(evaluate, "small_object_mask", spy)
    images, labels = _scene(1)
    evaluate.evaluate_cell(_net(patch_size), images, labels, {}, 0, small_area=10, baselines=BASELINES)
    ((args, kwargs, region),) = seen
    assert args[1] == 10 and kwargs == {"dilation": evaluate.DEFAULT_SMALL_DILATION}
    # objects of 9 and 4 px (< 10) are small, grown by 2 px (5x5 squares around each pixel); the 100 px one is not
    expected = torch.zeros(1, 1, 32, 32)
    expected[0, 0, 0:7, 0:7] = 1  # 3x3 object at [2:5, 2:5] grown by 2
    expected[0, 0, 18:24, 1:7] = 1  # 2x2 object at [20:22, 3:5] grown by 2
    assert torch.equal(region, expected)


def test_check_small_region_defaults_and_errors():
    assert evaluate.check_small_region(None, None, 2) == (64, 2)
    assert evaluate.check_small_region(None, 0, 3) == (512, 0)
    assert evaluate.check_small_region(16, 1, 2) == (16, 1)
    with pytest.raises(ValueError, match="--small_area"):
        evaluate.check_small_region(0, None, 2)
    with pytest.raises(ValueError, match="--small_dilation"):
        evaluate.check_small_region(None, -1, 2)
    assert "fewer than 64 pixels, dilated by 2 pixels" in evaluate.describe_small_region(64, 2, 2)


def test_fit_cell_baselines_sees_training_crops_only(tmp_path, monkeypatch):
    parser = read_bundle(
        bundle_config_file("mae"), {**TINY, **BUDGET, "dataset_dir": str(tmp_path), "demo_set": "bloodsmear2d"}
    )
    calls = {}
    real_crops, real_fit = evaluate.sample_crops, evaluate.fit_baselines

    def spy_crops(datalist, transform, num_crops, seed):
        calls["datalist"], calls["seed"] = list(datalist), seed
        return real_crops(datalist, transform, num_crops, seed)

    def spy_fit(crops, patch_size, mask_ratio, seed):
        calls["crops"], calls["fit"] = crops, (patch_size, mask_ratio, seed)
        return real_fit(crops, patch_size, mask_ratio, seed)

    monkeypatch.setattr(evaluate, "sample_crops", spy_crops)
    monkeypatch.setattr(evaluate, "fit_baselines", spy_fit)
    fit = evaluate.fit_cell_baselines(parser, 0.75, seed=5)
    training = {item["image"] for item in parser.get_parsed_content("train#datalist")}
    validation = {item["image"] for item in parser.get_parsed_content("validate#datalist")}
    assert training and validation and not training & validation
    assert {item["image"] for item in calls["datalist"]} == training
    assert calls["crops"].shape == (evaluate.DEFAULT_BASELINE_CROPS, 1, 32, 32) and calls["seed"] == 5
    assert calls["fit"] == (8, 0.75, 5)
    assert fit["sigma"] in DEFAULT_SIGMAS and len(fit["global_mean"]) == 1
    assert fit["global_mean"] == pytest.approx(calls["crops"].mean((0, 2, 3)).tolist())


@pytest.mark.slow
def test_matches_the_bundle_validation_baselines(tmp_path):
    """On the bundle's own masks (seed, ratio, batch) and fit, the experiments' fills score what validation logs."""
    overrides = {**TINY, **BUDGET, "epochs": 1, "val_interval": 1, "resume": False, "seed": 0,
                 "bundle_root": str(tmp_path), "demo_set": "bloodsmear2d"}  # fmt: skip
    workflow, _ = train_cell(bundle_config_file("mae"), overrides)
    parser, val = workflow.parser, validation_set(workflow)
    logged = parser.get_parsed_content("validate#evaluator").state.metrics
    ratio = float(parser.get_parsed_content("val_mask_ratio"))
    fit = evaluate.fit_cell_baselines(parser, ratio, seed=0)
    assert fit["sigma"] == parser.get_parsed_content("validate#baselines")["sigma"]
    network = parser.get_parsed_content("network")
    out = evaluate.evaluate_cell(network, val.images, val.labels, val.class_names, 0, 64, fit, batch_size=4)
    for fill in ("global_mean", "visible_mean", "gaussian"):
        assert out[f"{fill}_psnr_masked"] == pytest.approx(logged[f"val_psnr_masked_{fill}"], rel=1e-4)
    assert out["psnr_masked"] == pytest.approx(logged["val_psnr_masked"], rel=1e-4)


def test_score_label_maps_of_images_of_different_sizes():
    small, large = torch.zeros(1, 8, 8, dtype=torch.long), torch.zeros(1, 16, 12, dtype=torch.long)
    small[:, 1:3, 1:3] = 1  # a 4-pixel object, found
    large[:, 2:12, 2:10] = 1  # an 80-pixel object, missed
    scores = evaluate.score_label_maps([small, torch.zeros_like(large)], [small, large], 2, ["bg", "cell"])
    assert scores["dice_small"] == scores["dice_lt16"] == 1.0 and scores["dice_ge64"] == 0.0
    assert scores["dice"] == pytest.approx(0.5) and scores["n_gt_cell"] == 2 and "f1_cell" in scores
    with pytest.raises(ValueError, match="one label map per prediction"):
        evaluate.score_label_maps([small], [small, large], 2)


def test_lesion_patches():
    labels = torch.zeros(1, 1, 8, 8)
    labels[0, 0, 0, 0] = 3  # one pixel in patch 0
    labels[0, 0, 5, 5] = 1  # patch 3, not a lesion class
    labels[0, 0, 6, 1] = 4  # patch 2
    assert evaluate.lesion_patches(labels, [3, 4], 4).tolist() == [[1.0, 0.0, 1.0, 0.0]]
    assert evaluate.lesion_patches(labels, [1], 4).tolist() == [[0.0, 0.0, 0.0, 1.0]]


@pytest.mark.parametrize("use_mps", [True, False])
def test_evaluate_mps_is_repeatable_and_restores_the_ratio(use_mps):
    net = _tiny_amlp(use_mps=use_mps, mask_ratio=0.5, mps_warmup=0)
    images = [torch.rand(1, 32, 32) for _ in range(3)]
    labels = [torch.zeros(1, 32, 32) for _ in range(3)]
    for y in labels:
        y[0, :8, :8] = 3  # patch 0 of every image is a lesion patch: 1 of 16
    a = evaluate.evaluate_mps(net, images, labels, [3], mask_ratio=0.75, seed=1, batch_size=2)
    b = evaluate.evaluate_mps(net, images, labels, [3], mask_ratio=0.75, seed=1, batch_size=2)
    assert a == pytest.approx(b, nan_ok=True) and net.mask_ratio == 0.5
    assert a["chance_hit_rate"] == pytest.approx(1 / 16)
    assert 0 <= a["mps_hit_rate"] <= 1 / 12  # 12 masked patches per image, at most one of them lesion
    assert math.isfinite(a["category_recall"]) == use_mps
    nan = evaluate.evaluate_mps(net, images, None, [3], mask_ratio=0.75)
    assert all(math.isnan(v) for v in nan.values())


def _tiny_amlp(**kwargs) -> AMLPMaskedAutoencoder:
    return AMLPMaskedAutoencoder(in_channels=1, img_size=32, patch_size=8, spatial_dims=2, **TINY, **kwargs)
