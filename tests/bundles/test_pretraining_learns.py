"""The MAE bundle's own training learns: a shortened run beats the no-learning fills on real nuclei.

The bundle's default budget (10 epochs of 100 batches of 32 random 64x64 crops of three 256x256 quadrants of a
real fluorescence image) is shortened to 5 epochs; every other setting is the bundle's. The validation tiles are
the fourth quadrant, never trained on. A model that learned nothing scores about the visible-mean fill; this
checks the model beats it by a margin, so the test fails if pretraining stops learning.
"""

from __future__ import annotations

from bundle_cli import epoch_metric, ok, run_bundle


def test_shortened_main_budget_beats_visible_mean_fill(tmp_path):
    log = ok(
        run_bundle("mae", "run", "training", "--bundle_root", str(tmp_path), "--epochs", "5", "--val_interval", "5")
    )
    model = epoch_metric(log, "val_psnr_masked")
    fill = epoch_metric(log, "val_psnr_masked_visible_mean")
    global_mean = epoch_metric(log, "val_psnr_masked_global_mean")
    assert len(model) == len(fill) == 1, log[-3000:]
    assert fill[0] > global_mean[0]  # the image's own visible mean already beats one constant
    assert model[0] > fill[0] + 1.0, (model, fill)
