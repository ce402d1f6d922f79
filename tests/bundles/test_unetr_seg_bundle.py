"""The UNETR segmentation bundle run through ``python -m monai.bundle``, as a user runs it (Model Zoo CI style)."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle_cli import REPO, epoch_metric, missing_metadata, ok, run_bundle
from PIL import Image

CONFIGS = REPO / "bundles" / "unetr_seg" / "configs"
# a tiny UNETR: patch 8 needs at least 4 blocks for its two skips
TINY_SIZES = {"hidden_size": 48, "mlp_dim": 96, "num_layers": 4, "num_heads": 4, "feature_size": 8}
TINY = [a for k, v in TINY_SIZES.items() for a in (f"--{k}", str(v))]


def bundle(*args: str, configs: tuple[str, ...] = ("train.json",)):
    return run_bundle("unetr_seg", *args, configs=configs)


def test_metadata_has_required_fields():
    assert not missing_metadata("unetr_seg")
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    assert meta["version"] in meta["changelog"]
    fmt = meta["network_data_format"]
    train = json.loads((CONFIGS / "train.json").read_text())
    assert "training" in train and "network_def" in train and train["pretrained_encoder"] == ""
    assert fmt["inputs"]["image"]["num_channels"] == train["in_channels"]
    assert fmt["outputs"]["pred"]["num_channels"] == train["out_channels"]
    assert fmt["inputs"]["image"]["spatial_shape"] == [train["img_size"]] * train["spatial_dims"]


def test_verify_net_in_out():
    assert "verified with no error" in ok(bundle("verify_net_in_out", "network_def"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, str]:
    """A short real training from scratch on the built-in demo data (real DSB 2018 nuclei tiles)."""
    root = tmp_path_factory.mktemp("unetr_seg")
    log = ok(bundle("run", "training", "--bundle_root", str(root), "--epochs", "4", "--val_interval", "4", *TINY))
    return root, log


def test_training_lowers_loss_and_writes_model(trained):
    root, log = trained
    assert "training from scratch" in log
    losses = epoch_metric(log, "train_loss")
    assert len(losses) == 4, log[-3000:]
    assert losses[-1] < losses[0], losses
    dice = epoch_metric(log, "val_mean_dice")
    assert len(dice) == 1 and 0.0 <= dice[0] <= 1.0
    models = root / "models"
    assert {"model.pt", "model_final.pt"} <= {p.name for p in models.iterdir()}
    state = torch.load(models / "model.pt", weights_only=True)  # one object saved: its bare state dict
    assert "vit.blocks.3.attn.qkv.weight" in state and "decoder4.transp_conv.conv.weight" in state


def test_training_from_pretrained_encoder(tmp_path):
    from maskseg_monai.networks import MaskedAutoencoderViT, export_encoder

    mae = MaskedAutoencoderViT(1, 64, 8, **{k: v for k, v in TINY_SIZES.items() if k != "feature_size"},
                               decoder_hidden_size=32, decoder_mlp_dim=64, decoder_num_layers=1, decoder_num_heads=4,
                               spatial_dims=2)  # fmt: skip
    enc_path = export_encoder(mae, tmp_path / "encoder.pt")
    n_keys = len(torch.load(enc_path, weights_only=True)["state_dict"])
    log = ok(bundle("run", "training", "--bundle_root", str(tmp_path), "--epochs", "2", "--val_interval", "2",
                    "--pretrained_encoder", enc_path, "--freeze_encoder_epochs", "1", *TINY))  # fmt: skip
    assert re.search(rf"loaded {n_keys}/{n_keys} encoder tensors .* 0 missing, 0 unexpected, 0 shape mismatches", log)
    assert "encoder frozen for the first 1 epoch(s)" in log and "epoch 2: encoder unfrozen" in log
    final = torch.load(tmp_path / "models" / "model_final.pt", weights_only=True)["model"]
    loaded = mae.encoder.state_dict()["blocks.0.mlp.linear1.weight"]
    assert not torch.equal(final["vit.blocks.0.mlp.linear1.weight"], loaded)  # trained after the unfreeze


def test_evaluate_writes_per_image_csv(trained):
    root, _ = trained
    ok(bundle("run", "--bundle_root", str(root), *TINY, configs=("train.json", "evaluate.json")))
    with open(root / "eval" / "metrics_per_image.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 16 and rows[0]["filename"].endswith(".png")
    # class names from the datalist's "labels"
    for key in ("dice", "dice_nucleus", "dice_nucleus_lt16", "dice_nucleus_16to64", "dice_nucleus_ge64",
                "precision_nucleus", "recall_nucleus", "f1_nucleus", "dice_lt16"):  # fmt: skip
        assert key in rows[0], sorted(rows[0])
    assert all(0.0 <= float(r["dice"]) <= 1.0 for r in rows)
    summary = dict(line.split(",") for line in (root / "eval" / "metrics_summary.csv").read_text().splitlines())
    assert int(summary["n_gt_nucleus"]) > 0


def test_inference_writes_masks_with_input_size(trained, tmp_path):
    root, _ = trained
    rng = np.random.default_rng(0)
    for i, shape in enumerate([(80, 70), (40, 64)]):
        Image.fromarray((rng.random(shape) * 255).astype(np.uint8)).save(tmp_path / f"query{i}.png")
    ok(bundle("run", "inference", "--bundle_root", str(root), "--input_dir", str(tmp_path), *TINY,
              configs=("train.json", "inference.json")))  # fmt: skip
    masks = sorted((root / "outputs").glob("*_seg.png"))
    assert [p.name for p in masks] == ["query0_seg.png", "query1_seg.png"]
    for mask, shape in zip(masks, [(80, 70), (40, 64)]):
        arr = np.asarray(Image.open(mask))
        assert arr.shape == shape and set(np.unique(arr)) <= {0, 1}


def test_inference_3d_nifti_keeps_affine(tmp_path):
    import nibabel as nib

    from maskseg_monai.networks import UNETR

    net = UNETR(1, 2, 32, patch_size=8, spatial_dims=3, **TINY_SIZES)
    (tmp_path / "models").mkdir()
    torch.save({"model": net.state_dict()}, tmp_path / "models" / "model.pt")
    affine = np.array([[0.5, 0, 0, 10], [0, 0.7, 0, -5], [0, 0, 2.0, 3], [0, 0, 0, 1]])
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    volume = np.random.default_rng(0).random((40, 36, 20)).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, affine), inputs / "vol.nii.gz")
    ok(bundle("run", "inference", "--bundle_root", str(tmp_path), "--input_dir", str(inputs), "--spatial_dims", "3",
              "--img_size", "32", *TINY, configs=("train.json", "inference.json")))  # fmt: skip
    out = nib.load(tmp_path / "outputs" / "vol_seg.nii.gz")
    assert out.shape == (40, 36, 20)
    np.testing.assert_allclose(out.affine, affine, atol=1e-5)


def test_inference_3d_dicom_series_writes_nifti_and_dicom_seg(tmp_path):
    """A DICOM series folder in (pydicom's real CT5N), NIfTI with the series' geometry and a DICOM SEG out."""
    import nibabel as nib
    import pydicom
    from monai.transforms import LoadImage

    from maskseg_monai.data.demo import demo_dicom_series_dir
    from maskseg_monai.networks import UNETR

    net = UNETR(1, 2, 32, patch_size=8, spatial_dims=3, **TINY_SIZES)
    state = net.state_dict()
    state["out.conv.conv.bias"] = torch.tensor([0.0, 1e4])  # foreground everywhere: a SEG needs a segment
    (tmp_path / "models").mkdir()
    torch.save({"model": state}, tmp_path / "models" / "model.pt")
    series = tmp_path / "inputs" / "CT5N"
    shutil.copytree(demo_dicom_series_dir(), series)
    ok(bundle("run", "inference", "--bundle_root", str(tmp_path), "--input_dir", str(tmp_path / "inputs"),
              "--spatial_dims", "3", "--img_size", "32", "--dicom_seg", "true", *TINY,
              configs=("train.json", "inference.json")))  # fmt: skip
    reference = LoadImage(reader="ITKReader", image_only=True)(str(series))
    out = nib.load(tmp_path / "outputs" / "CT5N_seg.nii.gz")
    assert out.shape == tuple(reference.shape) == (16, 16, 5)
    np.testing.assert_allclose(out.affine, reference.affine.numpy(), atol=1e-4)
    seg = pydicom.dcmread(tmp_path / "outputs" / "CT5N_seg.dcm")
    source = pydicom.dcmread(next(series.iterdir()), stop_before_pixels=True)
    assert seg.Modality == "SEG" and seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert int(seg.NumberOfFrames) == 5 and seg.pixel_array.all()


def test_two_process_ddp_with_pretrained_frozen_encoder(tmp_path):
    """``multi_gpu_train.json`` under torchrun, 2 CPU processes on gloo, with a frozen-then-unfrozen encoder."""
    import subprocess
    import sys

    from maskseg_monai.networks import MaskedAutoencoderViT, export_encoder

    mae = MaskedAutoencoderViT(1, 64, 8, **{k: v for k, v in TINY_SIZES.items() if k != "feature_size"},
                               decoder_hidden_size=32, decoder_mlp_dim=64, decoder_num_layers=1, decoder_num_heads=4,
                               spatial_dims=2)  # fmt: skip
    enc_path = export_encoder(mae, tmp_path / "encoder.pt")
    configs = str([str(CONFIGS / "train.json"), str(CONFIGS / "multi_gpu_train.json")])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "-m", "monai.bundle", "run", "training", "--config_file", configs,
           "--meta_file", str(CONFIGS / "metadata.json"), "--logging_file", str(CONFIGS / "logging.conf"),
           "--bundle_root", str(tmp_path), "--epochs", "2", "--val_interval", "2",
           "--pretrained_encoder", enc_path, "--freeze_encoder_epochs", "1", *TINY]  # fmt: skip
    log = ok(subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600))
    assert log.count("encoder tensors") >= 1 and "epoch 2: encoder unfrozen" in log
    models = sorted(p.name for p in (tmp_path / "models").iterdir())
    assert models == ["checkpoint_epoch=2.pt", "model.pt", "model_final.pt"]
