"""The MAE bundle run through ``python -m monai.bundle``, as a user runs it (Model Zoo CI style)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle_cli import REPO, TINY, epoch_metric, missing_metadata, ok, run_bundle
from PIL import Image

CONFIGS = REPO / "bundles" / "mae" / "configs"


def bundle(*args: str, configs: tuple[str, ...] = ("train.json",)):
    return run_bundle("mae", *args, configs=configs)


def epoch_losses(log: str) -> list[float]:
    return epoch_metric(log, "train_loss")


def test_metadata_has_required_fields():
    assert not missing_metadata("mae")
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    assert meta["version"] in meta["changelog"]
    fmt = meta["network_data_format"]
    assert fmt["inputs"]["image"]["num_channels"] == 1 and fmt["outputs"]["pred"]["num_channels"] == 2
    train = json.loads((CONFIGS / "train.json").read_text())
    assert "training" in train and "network_def" in train
    assert fmt["inputs"]["image"]["spatial_shape"] == [train["img_size"]] * train["spatial_dims"]


def test_verify_net_in_out():
    out = ok(bundle("verify_net_in_out", "network_def"))
    assert "verified with no error" in out


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, str]:
    """A short real training on the built-in demo data (real DSB 2018 nuclei tiles)."""
    root = tmp_path_factory.mktemp("mae_bundle")
    log = ok(
        bundle(
            "run",
            "training",
            "--bundle_root",
            str(root),
            "--epochs",
            "6",
            "--val_interval",
            "3",
            "--warmup_epochs",
            "1",
            "--batch_size",
            "8",
            *TINY,
        )
    )
    return root, log


def test_training_lowers_loss_and_writes_outputs(trained):
    root, log = trained
    losses = epoch_losses(log)
    assert len(losses) == 6, log[-3000:]
    assert losses[-1] < 0.5 * losses[0], losses
    assert re.search(r"val_psnr_masked: [0-9.]+", log)
    models = root / "models"
    for name in ("model.pt", "model_final.pt", "encoder.pt"):
        assert (models / name).is_file(), sorted(p.name for p in models.iterdir())
    assert not list(models.glob(".tmp-*"))
    final = torch.load(models / "model_final.pt", weights_only=True)
    assert {"model", "optimizer", "lr_scheduler"} <= set(final)
    enc = torch.load(models / "encoder.pt", weights_only=True)
    assert enc["config"]["patch_size"] == [8, 8] and "blocks.0.attn.qkv.weight" in enc["state_dict"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags: dict[str, int] = {}
    for events in (root / "runs").glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        tags.update({t: len(acc.Scalars(t)) for t in acc.Tags()["scalars"]})
    assert tags.get("train_loss", 0) >= 6 * 6 and tags.get("val_psnr_masked", 0) == 2, tags
    assert (root / "demo_data" / "nuclei2d_regions").is_dir()
    for fill in ("global_mean", "visible_mean", "gaussian"):
        assert tags.get(f"val_psnr_masked_{fill}", 0) == 2, tags
    assert re.search(r"baselines fitted on 64 training crops \(patch 8, mask ratio 0.5\): gaussian sigma", log)


def test_evaluate_writes_metrics(trained):
    root, _ = trained
    ok(bundle("run", "--bundle_root", str(root), *TINY, configs=("train.json", "evaluate.json")))
    rows = dict(line.split(",") for line in (root / "eval" / "metrics.csv").read_text().splitlines())
    fills = {f"val_psnr_masked_{fill}" for fill in ("global_mean", "visible_mean", "gaussian")}
    assert set(rows) == {"val_psnr_masked", "val_psnr_all", "val_ssim_masked", "val_ssim_all"} | fills
    assert 5.0 < float(rows["val_psnr_masked"]) < 60.0
    # on real nuclei, interpolating the visible pixels beats filling with their mean, which beats one constant
    values = {k: float(v) for k, v in rows.items()}
    assert values["val_psnr_masked_gaussian"] > values["val_psnr_masked_visible_mean"] + 2.0, values
    assert values["val_psnr_masked_visible_mean"] > values["val_psnr_masked_global_mean"], values


def test_inference_writes_panels(trained, tmp_path):
    root, _ = trained
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray((rng.random((80, 70)) * 255).astype(np.uint8)).save(tmp_path / f"query{i}.png")
    ok(
        bundle(
            "run",
            "inference",
            "--bundle_root",
            str(root),
            "--input_dir",
            str(tmp_path),
            *TINY,
            configs=("train.json", "inference.json"),
        )
    )
    panels = sorted((root / "outputs").glob("*_mae.png"))
    assert [p.name for p in panels] == ["query0_mae.png", "query1_mae.png"]
    assert np.asarray(Image.open(panels[0])).shape == (18 + 192 + 18, 4 * 192 + 3 * 4, 3)  # 64 px enlarged 3x


def test_patch_size_and_ratio_from_command_line(tmp_path):
    log = ok(
        bundle(
            "run",
            "training",
            "--bundle_root",
            str(tmp_path),
            "--epochs",
            "1",
            "--val_interval",
            "1",
            "--patch_size",
            "4",
            "--mask_ratio",
            "0.25",
            "--batch_size",
            "8",
            *TINY,
        )
    )
    enc = torch.load(tmp_path / "models" / "encoder.pt", weights_only=True)
    assert enc["config"]["patch_size"] == [4, 4]
    assert enc["state_dict"]["patch_embedding.position_embeddings"].shape[1] == 256
    assert "train_loss" in log


def test_3d_training_on_demo_volumes(tmp_path):
    log = ok(
        bundle(
            "run",
            "training",
            "--bundle_root",
            str(tmp_path),
            "--epochs",
            "2",
            "--val_interval",
            "2",
            "--spatial_dims",
            "3",
            "--demo_set",
            "bloodsmear3d",
            "--img_size",
            "32",
            "--patch_size",
            "8",
            "--batch_size",
            "2",
            *TINY,
        )
    )
    assert len(epoch_losses(log)) == 2
    enc = torch.load(tmp_path / "models" / "encoder.pt", weights_only=True)
    assert enc["config"]["spatial_dims"] == 3 and enc["config"]["patch_size"] == [8, 8, 8]


def test_inference_on_a_dicom_series_folder_writes_nifti_with_its_geometry(tmp_path):
    """A DICOM series folder (pydicom's real 5-slice CT) as inference input; the 3D output keeps its geometry."""
    import shutil

    import nibabel as nib
    from monai.bundle import ConfigParser
    from monai.transforms import LoadImage

    from maskseg_monai.data import demo_dicom_series_dir

    args = {"spatial_dims": 3, "img_size": 16, "patch_size": 4, "bundle_root": str(tmp_path)}
    tiny = {k.lstrip("-"): v for k, v in zip(TINY[::2], TINY[1::2])}
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / "mae" / "configs" / "train.json"))
    parser.update({**args, **{k: int(v) for k, v in tiny.items()}})
    (tmp_path / "models").mkdir()
    torch.save(parser.get_parsed_content("network_def").state_dict(), tmp_path / "models" / "model.pt")
    inputs = tmp_path / "inputs"
    shutil.copytree(demo_dicom_series_dir(), inputs / "ct_series")
    cli = [a for k, v in args.items() for a in (f"--{k}", str(v))]
    ok(bundle("run", "inference", *cli, "--input_dir", str(inputs), *TINY, configs=("train.json", "inference.json")))
    recon = tmp_path / "outputs" / "ct_series_recon.nii.gz"
    assert recon.is_file() and (tmp_path / "outputs" / "ct_series_mae.png").is_file()
    source = LoadImage(image_only=True, reader="ITKReader")(str(inputs / "ct_series"))
    out_affine, src_affine = nib.load(str(recon)).affine, np.asarray(source.affine)
    # the reconstruction lies on the padded/cropped network grid: same spacing and directions, origin moved by
    # whole voxels (5 slices padded to 16)
    np.testing.assert_allclose(out_affine[:3, :3], src_affine[:3, :3], atol=1e-5)
    shift = np.linalg.solve(src_affine[:3, :3], out_affine[:3, 3] - src_affine[:3, 3])
    np.testing.assert_allclose(shift, np.round(shift), atol=1e-3)
