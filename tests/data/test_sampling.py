"""Random-crop epochs (repeat_dataset) and crops drawn apart from training (sample_crops)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import CacheDataset, MetaTensor, get_track_meta
from monai.transforms import Compose, EnsureChannelFirstd, EnsureTyped, RandFlipd, RandSpatialCropd
from torch.utils.data import DataLoader

from maskseg_monai.data import repeat_dataset, sample_crops


def _items(n=3, size=32):
    rng = np.random.default_rng(0)
    return [{"image": rng.random((size, size)).astype(np.float32), "id": i} for i in range(n)]


def _transform(roi=8):
    return Compose(
        [
            EnsureChannelFirstd("image", channel_dim="no_channel"),
            EnsureTyped("image"),
            RandSpatialCropd("image", roi_size=(roi, roi), random_size=False),
            RandFlipd("image", prob=0.5, spatial_axis=0),
        ]
    )


def test_repeat_dataset_gives_every_item_equally_often_and_fresh_crops():
    data = CacheDataset(_items(), _transform(), progress=False, copy_cache=False)
    epoch = repeat_dataset(data, 10)
    assert len(epoch) == 12  # whole repeats of the 3 items
    ids = [epoch[i]["id"] for i in range(len(epoch))]
    assert sorted(ids) == [0] * 4 + [1] * 4 + [2] * 4
    crops = [epoch[i]["image"] for i in range(0, 12, 3)]  # four draws of item 0
    assert len({tuple(c.flatten().tolist()) for c in crops}) > 1
    assert all(type(c) is torch.Tensor for c in crops)  # built without MONAI metadata
    assert get_track_meta()  # and the global switch is restored
    batch = next(iter(DataLoader(epoch, batch_size=4, shuffle=True)))
    assert batch["image"].shape == (4, 1, 8, 8)
    # the cache is not modified by the random transforms (copy_cache=False is safe)
    assert torch.equal(torch.as_tensor(data._cache[0]["image"])[0], torch.as_tensor(_items()[0]["image"]))


def test_repeat_dataset_uses_a_long_datalist_once_and_can_keep_metadata():
    data = CacheDataset(_items(5), _transform(), progress=False)
    assert len(repeat_dataset(data, 2)) == 5
    assert isinstance(repeat_dataset(data, 2, track_meta=True)[0]["image"], MetaTensor)
    with pytest.raises(ValueError, match="empty"):
        repeat_dataset(CacheDataset([], _transform(), progress=False), 4)
    with pytest.raises(ValueError, match="positive integer"):
        repeat_dataset(data, 0)


def test_sample_crops_is_seeded_and_leaves_the_training_transform_alone():
    transform = _transform()
    transform.set_random_state(seed=7)
    before = transform(dict(_items()[0]))["image"]
    transform.set_random_state(seed=7)
    a = sample_crops(_items(), transform, 6, seed=1)
    b = sample_crops(_items(), transform, 6, seed=1)
    assert a.shape == (6, 1, 8, 8) and torch.equal(a, b)
    assert not torch.equal(a, sample_crops(_items(), transform, 6, seed=2))
    assert torch.equal(transform(dict(_items()[0]))["image"], before)  # its random state did not move
    with pytest.raises(ValueError, match="empty"):
        sample_crops([], transform, 2)
