"""Tests of maskseg_monai.data.synthetic: blood-smear scenes, 2D and 3D."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import ndimage as ndi

from maskseg_monai.data import BLOOD_CLASSES, blood_smear_scene

SHAPES = [(64, 64), (32, 32, 32)]


@pytest.mark.parametrize("shape", SHAPES)
def test_shapes_dtypes_range(shape):
    image, semantic, instance = blood_smear_scene(shape, seed=0)
    assert image.shape == (1, *shape) and image.dtype == np.float32
    assert semantic.shape == shape and semantic.dtype == np.uint8
    assert instance.shape == shape and instance.dtype == np.int32
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert set(np.unique(semantic).tolist()) <= set(BLOOD_CLASSES)


@pytest.mark.parametrize("shape", SHAPES)
def test_deterministic_per_seed(shape):
    a, b, c = blood_smear_scene(shape, seed=7), blood_smear_scene(shape, seed=7), blood_smear_scene(shape, seed=8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[1], c[1])


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", range(5))
def test_all_classes_present_with_defaults(shape, seed):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, semantic, _ = blood_smear_scene(shape, seed)
    assert set(np.unique(semantic).tolist()) == set(BLOOD_CLASSES)


@pytest.mark.parametrize("shape", SHAPES)
def test_platelets_are_2_to_4_px_wide(shape):
    full = np.ones((3,) * len(shape))
    sizes = []
    for seed in range(5):
        _, semantic, _ = blood_smear_scene(shape, seed)
        labels, n = ndi.label(semantic == 3, structure=full)
        assert n >= 1
        sizes += [s.stop - s.start for box in ndi.find_objects(labels) for s in box]
    assert min(sizes) >= 2 and max(sizes) <= 4


@pytest.mark.parametrize("shape", SHAPES)
def test_instances_are_consistent_with_semantics(shape):
    _, semantic, instance = blood_smear_scene(shape, seed=3)
    assert np.array_equal(instance > 0, semantic > 0)
    full = np.ones((3,) * len(shape))
    for i in np.unique(instance[instance > 0]):
        classes = np.unique(semantic[instance == i])
        assert len(classes) == 1  # one class per object
        assert ndi.label(instance == i, structure=full)[1] == 1  # aggregates are one connected cluster
    white = np.unique(instance[semantic == 2])
    red = np.unique(instance[semantic == 1])
    assert np.mean([np.sum(instance == i) for i in white]) > np.mean([np.sum(instance == i) for i in red])


def test_counts_are_honoured():
    _, semantic, instance = blood_smear_scene((96, 96), seed=1, n_red=5, n_white=2, n_platelets=4, n_aggregates=1)
    counts = {c: len(np.unique(instance[semantic == c])) for c in (1, 2, 3, 4)}
    assert counts == {1: 5, 2: 2, 3: 4, 4: 1}
    _, semantic, _ = blood_smear_scene((64, 64), seed=1, n_white=0, n_aggregates=0)
    assert not np.isin(semantic, [2, 4]).any()


def test_crowded_scene_warns():
    with pytest.warns(UserWarning, match="too crowded"):
        blood_smear_scene((32, 32), seed=0, n_red=100)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"shape": (64,)},
        {"shape": (8, 8, 8, 8)},
        {"shape": (64, 16)},
        {"shape": (31, 31, 31)},
        {"shape": (64, 64), "n_red": -1},
        {"shape": (64, 64), "n_platelets": 1.5},
    ],
)
def test_ill_arg(kwargs):
    with pytest.raises(ValueError):
        blood_smear_scene(seed=0, **kwargs)
