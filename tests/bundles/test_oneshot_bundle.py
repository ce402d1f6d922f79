"""The one-shot (SG-One) bundle run through ``python -m monai.bundle``, as a user runs it."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_cli import REPO, epoch_metric, missing_metadata, ok, run_bundle
from PIL import Image

from maskseg_monai.data.synthetic import blood_smear_scene

CONFIGS = REPO / "bundles" / "oneshot" / "configs"
SMALL = ["--channels", "[8,16,16,16,16]", "--seg_channels", "16"]
SHORT = ["--epochs", "2", "--episodes_per_epoch", "16", "--val_episodes", "8", "--val_interval", "1", *SMALL]
# the labelled-fold mode on the synthetic textures (the default trains on real images without labels)
LABELLED = ["--demo_set", "textures2d", "--episodes", "labelled", "--class_folds", "[[2,4,6,8,10,12],[1,3,5,7,9,11]]"]


def bundle(*args: str, configs: tuple[str, ...] = ("train.json",)) -> subprocess.CompletedProcess:
    return run_bundle("oneshot", *args, configs=configs)


def test_metadata_has_required_fields():
    assert not missing_metadata("oneshot")
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    assert meta["version"] in meta["changelog"]
    fmt = meta["network_data_format"]
    assert list(fmt["inputs"]) == ["image", "support_image", "support_label"]
    assert fmt["outputs"]["pred"]["num_channels"] == 2


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, str]:
    """Labelled episodic training on the textures demo (fold 0: odd classes trained, even held out)."""
    root = tmp_path_factory.mktemp("oneshot")
    log = ok(bundle("run", "training", "--bundle_root", str(root), *LABELLED, *SHORT))
    return root, log


def test_labelled_training_writes_models_and_validates_on_held_out_classes(trained):
    root, log = trained
    assert "held-out classes [2, 4, 6, 8, 10, 12], training classes [1, 3, 5, 7, 9, 11]" in log
    losses = epoch_metric(log, "train_loss")
    assert len(losses) == 2 and all(np.isfinite(losses))
    dice = epoch_metric(log, "val_mean_dice")
    assert len(dice) == 2 and all(0.0 <= d <= 1.0 for d in dice)
    names = {p.name for p in (root / "models").iterdir()}
    assert names == {"model.pt", "model_final.pt", "checkpoint_epoch=2.pt"}
    state = torch.load(root / "models" / "model.pt", weights_only=True)
    assert "guide.weight" in state and "cnn.blocks.0.0.conv.weight" in state


def test_default_training_on_real_images_without_labels_and_evaluation_against_baselines(tmp_path):
    """The default: pseudo-classes of real images (no labels); evaluation on real classes next to baselines."""
    log = ok(bundle("run", "training", "--bundle_root", str(tmp_path), *SHORT))
    assert "held-out classes [1, 2, 3] (training uses superpixel pseudo-classes, no labels)" in log
    assert len(epoch_metric(log, "train_loss")) == 2 and (tmp_path / "models" / "model_final.pt").is_file()
    log = ok(bundle("run", "evaluating", "--bundle_root", str(tmp_path), "--eval_episodes", "24", *SMALL,
                    "--eval_checkpoint", "model_final.pt", configs=("train.json", "evaluate.json")))  # fmt: skip
    sets = {r["set"]: r for r in csv.DictReader(open(tmp_path / "eval" / "metrics_per_set.csv"))}
    assert set(sets) == {"brain_tissue", "nuclei"}
    for row in sets.values():
        base = {k: float(v) for k, v in row.items() if k.startswith("dice_") and k.endswith("_baseline")}
        assert set(base) == {f"dice_{b}_baseline" for b in ("otsu", "copy_support", "all_pixels", "body")}
        assert float(row["best_baseline_dice"]) == max(base.values())
        assert float(row["gain_over_best_baseline"]) == pytest.approx(float(row["dice"]) - max(base.values()))
    assert float(sets["nuclei"]["dice_otsu_baseline"]) > 0.8  # bright nuclei on a dark background
    assert "one-shot set brain_tissue: Dice" in log


def test_evaluate_writes_per_class_and_per_episode_csv(trained):
    root, _ = trained
    log = ok(bundle("run", "evaluating", "--bundle_root", str(root), "--eval_episodes", "30", *SMALL, *LABELLED,
                    configs=("train.json", "evaluate.json")))  # fmt: skip
    assert "one-shot Dice over 30 episodes" in log
    per_class = list(csv.DictReader(open(root / "eval" / "metrics_per_class.csv")))
    held_out = {f"stripes_{a:03d}deg" for a in (15, 45, 75, 105, 135, 165)}  # classes 2, 4, ..., 12
    assert {r["filename"] for r in per_class} <= held_out and len(per_class) >= 4
    assert sum(int(r["n_episodes"]) for r in per_class) == 30
    episodes = list(csv.DictReader(open(root / "eval" / "metrics_per_episode.csv")))
    assert len(episodes) == 30 and {int(r["class"]) for r in episodes} <= {2, 4, 6, 8, 10, 12}
    summary = dict(line.strip().split(",") for line in open(root / "eval" / "metrics_summary.csv"))
    assert 0.0 <= float(summary["mean_dice_over_classes"]) <= 1.0


def test_inference_on_demo_writes_masks_with_query_geometry(trained):
    root, _ = trained
    out = root / "demo_out"
    log = ok(bundle("run", "inference", "--bundle_root", str(root), "--output_dir", str(out), *SMALL,
                    configs=("inference.json",)))  # fmt: skip
    assert "one-shot support: mni152_axial_" in log and "class 2" in log  # white matter of the first axial slice
    masks = sorted(out.glob("*_seg.png"))
    axial = sorted((root / "demo_data" / "oneshot_real2d" / "images" / "eval").glob("mni152_axial_*.png"))
    assert len(masks) == len(axial) - 1  # every other slice holding white matter; not the nuclei tiles
    query = axial[1].parent / masks[0].name.replace("_seg", "")
    assert np.asarray(Image.open(masks[0])).shape == np.asarray(Image.open(query)).shape
    assert set(np.unique(np.asarray(Image.open(masks[0])))) <= {0, 1}


def _write_volume(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(array, affine), str(path))


def test_inference_3d_volumes_slice_wise_keep_affine(trained, tmp_path):
    root, _ = trained
    affine = np.array([[0.8, 0, 0, -10], [0, 0.8, 0, 5], [0, 0, 2.0, 30], [0, 0, 0, 1]])
    image, semantic, _ = blood_smear_scene((40, 36, 32), seed=3)
    _write_volume(tmp_path / "support.nii.gz", image[0], affine)
    _write_volume(tmp_path / "support_label.nii.gz", semantic.astype(np.uint8), affine)
    queries = tmp_path / "queries"
    queries.mkdir()
    for i, shape in enumerate([(40, 36, 33), (32, 32, 40)]):
        q, _, _ = blood_smear_scene(shape, seed=10 + i)
        _write_volume(queries / f"case{i}.nii.gz", q[0], affine * (i + 1) if i else affine)
    out = tmp_path / "out"
    ok(bundle("run", "inference", "--bundle_root", str(root), "--spatial_dims", "3",
              "--support_image", str(tmp_path / "support.nii.gz"), "--support_label",
              str(tmp_path / "support_label.nii.gz"), "--support_class", "2", "--query_dir", str(queries),
              "--output_dir", str(out), *SMALL, configs=("inference.json",)))  # fmt: skip
    for i in range(2):
        src = nib.load(str(queries / f"case{i}.nii.gz"))
        seg = nib.load(str(out / f"case{i}_seg.nii.gz"))
        assert seg.shape == src.shape
        np.testing.assert_allclose(seg.affine, src.affine, atol=1e-5)
        assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1}


def test_empty_support_mask_fails_clearly_and_writes_nothing(trained, tmp_path):
    root, _ = trained
    image, _, _ = blood_smear_scene((48, 48), seed=1)
    Image.fromarray((image[0] * 255).astype(np.uint8)).save(tmp_path / "s.png")
    Image.fromarray(np.zeros((48, 48), np.uint8)).save(tmp_path / "s_label.png")
    queries = tmp_path / "q"
    queries.mkdir()
    Image.fromarray((image[0] * 255).astype(np.uint8)).save(queries / "q.png")
    out = tmp_path / "out"
    proc = bundle("run", "inference", "--bundle_root", str(root), "--support_image", str(tmp_path / "s.png"),
                  "--support_label", str(tmp_path / "s_label.png"), "--query_dir", str(queries),
                  "--output_dir", str(out), *SMALL, configs=("inference.json",))  # fmt: skip
    assert proc.returncode != 0
    assert "s_label.png: the support label holds no foreground pixel" in proc.stdout + proc.stderr
    assert not out.exists() or not any(out.iterdir())


def test_folder_inference_with_skip_bad_files(trained, tmp_path):
    """A bad query among good ones: the good ones are written, the run ends with processed 2, failed 1 and exit 1."""
    root, _ = trained
    image, semantic, _ = blood_smear_scene((48, 48), seed=1)
    Image.fromarray((image[0] * 255).astype(np.uint8)).save(tmp_path / "s.png")
    Image.fromarray((semantic > 0).astype(np.uint8)).save(tmp_path / "s_label.png")
    queries = tmp_path / "q"
    queries.mkdir()
    for i in range(2):
        q, _, _ = blood_smear_scene((48, 48), seed=5 + i)
        Image.fromarray((q[0] * 255).astype(np.uint8)).save(queries / f"q{i}.png")
    (queries / "broken.png").write_text("not an image")
    out = tmp_path / "out"
    proc = bundle("run", "inference", "--bundle_root", str(root), "--support_image", str(tmp_path / "s.png"),
                  "--support_label", str(tmp_path / "s_label.png"), "--query_dir", str(queries),
                  "--output_dir", str(out), "--skip_bad_files", "true", *SMALL,
                  configs=("inference.json",))  # fmt: skip
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0, log[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["q0_seg.png", "q1_seg.png"], log[-3000:]
    assert "processed 2, failed 1" in log and "broken.png" in proc.stderr.strip().splitlines()[-1]


def test_two_process_ddp_training(tmp_path):
    """``multi_gpu_train.json`` under torchrun: 2 CPU processes on gloo, one set of checkpoints."""
    configs = str([str(CONFIGS / "train.json"), str(CONFIGS / "multi_gpu_train.json")])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29541",
           "-m", "monai.bundle", "run", "training", "--config_file", configs,
           "--meta_file", str(CONFIGS / "metadata.json"), "--logging_file", str(CONFIGS / "logging.conf"),
           "--bundle_root", str(tmp_path), *SHORT]  # fmt: skip
    log = ok(subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600))
    assert "rank 0 of 2 ready" in log and "rank 1 of 2 ready" in log
    names = sorted(p.name for p in (tmp_path / "models").iterdir())
    assert names == ["checkpoint_epoch=2.pt", "model.pt", "model_final.pt"]
