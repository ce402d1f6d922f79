"""The MAE bundle's own training learns: its default run beats the no-learning fills on real nuclei.

The bundle's default budget (10 epochs of 100 batches of 32 random 64x64 crops of three 256x256 quadrants of a
real fluorescence image; about 3 minutes on 2 CPU cores) with every setting the bundle's own. The validation tiles
are the fourth quadrant, never trained on. A model that learned nothing scores about the visible-mean fill; this
checks the model beats it by 1 dB, so the test fails if pretraining stops learning. A shorter run does not do:
5 epochs (cosine schedule over 500 steps) ended 0.1 dB above the fill, still on the constant-prediction plateau.
"""

from __future__ import annotations

from bundle_cli import epoch_metric, ok, run_bundle


def test_default_budget_beats_visible_mean_fill(tmp_path):
    log = ok(run_bundle("mae", "run", "training", "--bundle_root", str(tmp_path)))
    model = epoch_metric(log, "val_psnr_masked")
    fill = epoch_metric(log, "val_psnr_masked_visible_mean")
    global_mean = epoch_metric(log, "val_psnr_masked_global_mean")
    assert len(model) == len(fill) == 5, log[-3000:]  # every 2 of 10 epochs
    assert fill[-1] > global_mean[-1]  # the image's own visible mean already beats one constant
    assert model[-1] > fill[-1] + 1.0, (model, fill)
