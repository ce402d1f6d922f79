from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from PIL import Image

from maskseg_monai.handlers import MaskRatioScheduler, ReconstructionSaver
from maskseg_monai.masking import extra_channel, merge_mae_output, patchify


class Holder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mask_ratio = 0.0


def run_schedule(scheduler: MaskRatioScheduler, epochs: int = 3, iters: int = 4) -> tuple[list[float], list[float]]:
    net = Holder()
    engine = Engine(lambda e, b: None)
    engine.network = net
    seen, logged = [], []
    scheduler.attach(engine)
    engine.add_event_handler(Events.ITERATION_STARTED, lambda e: seen.append(net.mask_ratio))
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: logged.append(e.state.metrics["mask_ratio"]))
    engine.run(range(iters), max_epochs=epochs)
    return seen, logged


def test_linear_per_iteration():
    seen, logged = run_schedule(MaskRatioScheduler(0.25, 0.75))
    expected = [0.25 + 0.5 * i / 11 for i in range(12)]
    assert seen == pytest.approx(expected)
    assert logged == pytest.approx([expected[3], expected[7], expected[11]])


def test_cosine_step_and_epoch_level():
    seen, _ = run_schedule(MaskRatioScheduler(0.2, 0.6, schedule="cosine", epoch_level=True))
    per_epoch = [0.2 + 0.4 * (1 - math.cos(math.pi * u)) / 2 for u in (0, 0.5, 1)]
    assert seen == pytest.approx([r for r in per_epoch for _ in range(4)])
    seen, _ = run_schedule(MaskRatioScheduler(0.2, 0.8, schedule="step", num_stages=3), epochs=3, iters=3)
    assert sorted(set(round(v, 6) for v in seen)) == pytest.approx([0.2, 0.5, 0.8])
    assert seen == sorted(seen)


def test_fixed_ratio_and_state_dict():
    sched = MaskRatioScheduler(0.5, 0.5)
    seen, _ = run_schedule(sched)
    assert set(seen) == {0.5}
    other = MaskRatioScheduler(0.25, 0.75)
    other.load_state_dict(sched.state_dict())
    assert other.ratio == 0.5


def test_scheduler_ill_args():
    with pytest.raises(ValueError, match="start"):
        MaskRatioScheduler(0.0, 0.5)
    with pytest.raises(ValueError, match="schedule"):
        MaskRatioScheduler(0.25, 0.5, schedule="exp")


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_reconstruction_saver_writes_named_panels(tmp_path, spatial_dims):
    from monai.data import MetaTensor

    img = torch.rand(1, 1, *(16,) * spatial_dims)
    mask = torch.zeros(1, 4**spatial_dims)
    mask[0, ::2] = 1
    extras = {"lesion_logits": torch.zeros_like(mask), "category": torch.ones_like(mask)}
    out = merge_mae_output(patchify(img, 4), mask, 4, img.shape[2:], 1, extras)
    image = MetaTensor(img[0], meta={"filename_or_obj": "/data/../evil/scan 01.nii.gz", "affine": torch.eye(4)})
    engine = Engine(lambda e, b: None)
    engine.state.output = [{"image": image, "pred": out[0]}]
    saver = ReconstructionSaver(str(tmp_path), 4, mps_channel=extra_channel(1, "category"))
    saver(engine)
    names = sorted(p.name for p in tmp_path.iterdir())
    expected = ["scan_01_mae.png"] + (["scan_01_recon.nii.gz"] if spatial_dims == 3 else [])
    assert names == expected
    panel = np.asarray(Image.open(tmp_path / "scan_01_mae.png"))
    scale = 12  # 16 px enlarged to PANEL_MIN_HEIGHT = 192
    assert panel.shape == (18 + 16 * scale + 18, 5 * 16 * scale + 4 * 4, 3)
    top = 18
    first = panel[top : top + 16 * scale, : 16 * scale, 0]
    # nearest-neighbour: every scale x scale block is one input pixel
    assert np.array_equal(first, np.repeat(np.repeat(first[::scale, ::scale], scale, 0), scale, 1))
    expected_first = img[0, 0] if spatial_dims == 2 else img[0, 0, ..., 8]
    assert np.abs(first[::scale, ::scale].astype(float) - expected_first.numpy() * 255).max() <= 0.5
    assert panel[:top].min() < 128 and panel[-18:].min() < 128  # title and caption text drawn


def test_panel_caption_reports_model_and_fill_psnr(tmp_path, monkeypatch):
    from maskseg_monai.handlers import reconstruction

    captions = []
    real = reconstruction._panel_strip
    monkeypatch.setattr(
        reconstruction, "_panel_strip", lambda p, t, caption, s: captions.append((t, caption)) or real(p, t, caption, s)
    )
    img = torch.zeros(1, 8, 8)
    img[:, 4:] = 1.0
    mask = torch.zeros(1, 8, 8)
    mask[:, :, 4:] = 1.0  # right half masked: fill = visible mean 0.5 -> MSE 0.25 -> PSNR 6.02 dB
    reconstruction.save_reconstruction(str(tmp_path), "a.png", img, mask, img, img, scale=2)
    titles, caption = captions[0]
    assert titles == ["input", "masked (50%)", "reconstruction", "recon. + visible"]
    assert "model 120.00 dB" in caption and "visible-mean fill 6.02 dB" in caption
