"""One-shot inference: support slice choice and slice-wise segmentation of volumes; one-shot evaluation CSVs."""

from __future__ import annotations

import csv
from types import SimpleNamespace

import pytest
import torch
from monai.data import MetaTensor

from maskseg_monai.handlers import OneShotMetricsSaver
from maskseg_monai.inferers import OneShotInferer, support_slices


def test_support_slices_are_chunk_centres_of_the_labelled_range():
    mask = torch.zeros(1, 4, 4, 20)
    mask[..., 4:16] = 1  # labelled slices 4..15: chunks [4..7], [8..11], [12..15], centres 5.5, 9.5, 13.5
    assert support_slices(mask, 3).tolist() == [5, 9, 13]
    assert support_slices(mask, 1).tolist() == [9]
    gap = mask.clone()
    gap[..., 8:12] = 0  # the middle chunk has no foreground: its nearest labelled slice is used
    assert support_slices(gap, 3).tolist() == [5, 7, 13]
    with pytest.raises(ValueError, match="empty"):
        support_slices(torch.zeros(1, 4, 4, 5), 3)


class Recorder(torch.nn.Module):
    """A 2D 'network' whose foreground logit is the support slice index it was given, to check the matching."""

    spatial_dims = 2

    def forward(self, x, support_image, support_mask):
        index = support_image.flatten(2).mean(-1)[:, 0]  # the support slices hold their own index as value
        fg = index.view(-1, 1, 1, 1).expand(x.shape[0], 1, *x.shape[2:])
        return torch.cat([torch.zeros_like(fg), fg], 1)


def test_volume_query_slices_use_the_matching_support_chunk():
    depth_s, depth_q = 12, 9
    support = torch.arange(depth_s, dtype=torch.float32).view(1, 1, 1, depth_s).expand(1, 4, 4, depth_s).clone()
    mask = torch.ones(1, 4, 4, depth_s)
    query = MetaTensor(torch.rand(1, 1, 6, 5, depth_q), affine=torch.diag(torch.tensor([2.0, 3.0, 4.0, 1.0])))
    out = OneShotInferer(support, mask, chunks=3, slice_batch_size=2)(query, Recorder())
    assert out.shape == (1, 2, 6, 5, depth_q)
    chosen = support_slices(mask, 3)  # [1, 5, 9]: centres of [0..3], [4..7], [8..11]
    expected = chosen[torch.arange(depth_q) * 3 // depth_q].float()  # query slices 0-2, 3-5, 6-8
    torch.testing.assert_close(out[0, 1, 0, 0], expected)
    assert isinstance(out, MetaTensor)
    torch.testing.assert_close(out.affine, query.affine)


def test_inferer_needs_a_support_and_matching_dims():
    with pytest.raises(ValueError, match="both"):
        OneShotInferer(torch.rand(1, 4, 4), None)
    with pytest.raises(ValueError, match="no support"):
        OneShotInferer()(torch.rand(1, 1, 4, 4), Recorder())
    net3d = Recorder()
    net3d.spatial_dims = 3
    with pytest.raises(ValueError, match="3D network"):
        OneShotInferer(torch.rand(1, 4, 4), torch.ones(1, 4, 4))(torch.rand(1, 1, 4, 4), net3d)


def test_one_shot_metrics_saver_writes_per_class_means(tmp_path):
    saver = OneShotMetricsSaver(tmp_path, class_names={2: "two", 3: "three"})
    engine = SimpleNamespace(state=SimpleNamespace(metrics={}))
    square = torch.zeros(8, 8)
    square[2:6, 2:6] = 1
    target = torch.stack([1 - square, square])  # one-hot [background, target]
    part = square.clone()
    part[2:4] = 0  # half of the square: Dice 2*8/(8+16) = 2/3
    half = torch.stack([1 - part, part])
    for cls, pred in ((2, target), (2, half), (3, target)):
        engine.state.output = [{"pred": pred, "label": target}]
        engine.state.batch = {"class": torch.tensor([cls]), "label_objects": torch.ones(1, 1, 8, 8)}
        saver.collect(engine)
    saver.write(engine)
    rows = {r["filename"]: r for r in csv.DictReader(open(tmp_path / "metrics_per_class.csv"))}
    assert float(rows["two"]["dice"]) == pytest.approx(5 / 6) and int(rows["two"]["n_episodes"]) == 2
    assert float(rows["three"]["dice"]) == pytest.approx(1.0)
    assert engine.state.metrics["mean_dice_over_classes"] == pytest.approx(11 / 12)  # classes weigh the same
    baseline = 2 * 16 / (16 + 64)  # every pixel predicted against a 16-pixel target
    assert float(rows["two"]["dice_all_objects_baseline"]) == pytest.approx(baseline)
    episodes = list(csv.DictReader(open(tmp_path / "metrics_per_episode.csv")))
    assert [r["class"] for r in episodes] == ["2", "2", "3"]


def test_one_shot_metrics_saver_scores_baselines_per_set_and_warns_on_empty(tmp_path, caplog):
    saver = OneShotMetricsSaver(
        tmp_path, baselines=("copy_support", "all_pixels", "body"), class_sets={"a": [1, 2], "b": [3]}
    )
    engine = SimpleNamespace(state=SimpleNamespace(metrics={}, iteration=1))
    square = torch.zeros(8, 8)
    square[2:6, 2:6] = 1
    target = torch.stack([1 - square, square])
    empty = torch.stack([torch.ones(8, 8), torch.zeros(8, 8)])
    for cls, pred, support in ((1, target, square), (2, target, torch.zeros(8, 8)), (3, empty, square)):
        support = support.clone()
        support[0, 0] = 1  # never empty
        engine.state.output = [{"pred": pred, "label": target}]
        engine.state.batch = {
            "class": torch.tensor([cls]),
            "image": torch.rand(1, 1, 8, 8),
            "support_image": torch.rand(1, 1, 1, 8, 8),
            "support_label": support[None, None, None],
            "body": square[None, None],
            "query_name": [f"q{cls}.png"],
        }
        with caplog.at_level("WARNING", logger="maskseg_monai.handlers"):
            saver.collect(engine)
    assert "query q3.png (class 3) is empty" in caplog.text and "q1.png" not in caplog.text
    saver.write(engine)
    sets = {r["set"]: r for r in csv.DictReader(open(tmp_path / "metrics_per_set.csv"))}
    assert float(sets["a"]["dice"]) == pytest.approx(1.0) and float(sets["b"]["dice"]) == pytest.approx(0.0)
    copy_a = (2 * 16 / 33 + 0.0) / 2  # support square (+1 pixel) on class 1; a single off-target pixel on class 2
    assert float(sets["a"]["dice_copy_support_baseline"]) == pytest.approx(copy_a)
    assert sets["a"]["best_baseline"] == "body" and float(sets["a"]["best_baseline_dice"]) == pytest.approx(1.0)
    assert float(sets["b"]["gain_over_best_baseline"]) == pytest.approx(-1.0)
    assert float(sets["a"]["dice_all_pixels_baseline"]) == pytest.approx(2 * 16 / 80)
