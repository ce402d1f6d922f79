"""``--cache_mode memory|disk|none``: the bundles train with each, on the same items (data bigger than memory)."""

from __future__ import annotations

import pytest
from bundle_cli import TINY, epoch_metric, ok, run_bundle

MAE = ["--epochs", "1", "--val_interval", "1", *TINY]
RUNS = {
    "unetr_seg": ["--epochs", "1", "--val_interval", "1", "--hidden_size", "48", "--mlp_dim", "96", "--num_layers", "4",
                  "--num_heads", "4", "--feature_size", "8"],
    "oneshot": ["--epochs", "1", "--episodes_per_epoch", "8", "--val_episodes", "4", "--val_interval", "1",
                "--channels", "[8,16,16,16,16]", "--seg_channels", "16"],
}  # fmt: skip


@pytest.mark.slow
def test_mae_trains_alike_in_every_cache_mode(tmp_path):
    psnr = {}
    for mode in ("memory", "disk", "none"):
        root = tmp_path / mode
        log = ok(run_bundle("mae", "run", "training", "--bundle_root", str(root), "--cache_mode", mode, *MAE))
        psnr[mode] = epoch_metric(log, "val_psnr_masked")
        cached = sorted(p.parent.name for p in (root / "cache").glob("*/*.pt")) if mode == "disk" else []
        assert (root / "cache").exists() == (mode == "disk")
        if mode == "disk":  # 3 training quadrants, 16 validation tiles
            assert cached == ["training"] * 3 + ["validation"] * 16
    assert psnr["memory"] == psnr["disk"] == psnr["none"] and len(psnr["memory"]) == 1


@pytest.mark.slow
@pytest.mark.parametrize("bundle", sorted(RUNS))
def test_segmentation_bundles_train_from_a_disk_cache(bundle, tmp_path):
    ok(run_bundle(bundle, "run", "training", "--bundle_root", str(tmp_path), "--cache_mode", "disk", *RUNS[bundle]))
    assert (tmp_path / "models" / "model_final.pt").is_file()
    assert list((tmp_path / "cache" / "training").glob("*.pt"))
