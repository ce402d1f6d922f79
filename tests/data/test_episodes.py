"""One-shot episodes: class pairing, folds, slices of volumes, superpixel pseudo-classes, support loading."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Compose, EnsureTyped, LoadImaged, RandSpatialCropd
from PIL import Image

from maskseg_monai.data.episodes import EpisodeDataset, load_support
from maskseg_monai.data.synthetic import oneshot_scene
from maskseg_monai.transforms import SuperpixelLabeld


def scenes(n: int, classes: list[int], shape=(32, 32), seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        present = rng.choice(classes, size=min(2, len(classes)), replace=False).tolist()
        image, label = oneshot_scene(shape, seed * 100 + i, present)
        out.append({"image": torch.from_numpy(image), "label": torch.from_numpy(label[None].astype(np.int64))})
    return out


def test_class_episodes_pair_different_images_of_the_episode_class():
    data = scenes(8, [1, 2, 3])
    ds = EpisodeDataset(data, classes=[1, 3], num_episodes=30, shots=2, seed=0, fixed=True)
    for i in range(len(ds)):
        ep = ds[i]
        assert ep["class"] in (1, 3)
        assert ep["image"].shape == (1, 32, 32) and ep["label"].shape == (1, 32, 32)
        assert ep["support_image"].shape == (2, 1, 32, 32) and ep["support_label"].shape == (2, 1, 32, 32)
        assert set(torch.unique(ep["label"]).tolist()) <= {0.0, 1.0}
        assert bool(ep["support_label"].flatten(1).any(1).all())  # every support holds the class
        query = next(d for d in data if torch.equal(d["image"], ep["image"]))
        torch.testing.assert_close(ep["label"], (query["label"] == ep["class"]).float())
        for s in ep["support_image"]:
            assert not torch.equal(s, ep["image"])  # support and query differ


def test_fixed_episodes_repeat_and_training_episodes_vary():
    data = scenes(6, [1, 2])
    fixed = EpisodeDataset(data, num_episodes=5, seed=3, fixed=True)
    assert all(torch.equal(fixed[i]["support_image"], fixed[i]["support_image"]) for i in range(5))
    train = EpisodeDataset(data, num_episodes=5, seed=3)
    draws = {int(train[0]["support_image"].sum() * 1000) for _ in range(10)}
    assert len(draws) > 1


def test_class_folds_keep_held_out_classes_out_of_training():
    data = scenes(10, [1, 2, 3, 4])
    train = EpisodeDataset(data, classes=[1, 2], num_episodes=50, seed=0)
    assert {train[i]["class"] for i in range(50)} == {1, 2}


def test_unknown_class_and_single_image_class_are_errors():
    data = scenes(4, [1, 2])
    with pytest.raises(ValueError, match="no image holds class 5"):
        EpisodeDataset(data, classes=[5])
    one = [data[0], {"image": data[1]["image"], "label": torch.zeros_like(data[1]["label"])}]
    with pytest.raises(ValueError, match="a single image"):
        EpisodeDataset(one, classes=[int(data[0]["label"].max())])
    with pytest.raises(ValueError, match=r"label must be \[1, \*spatial\]"):
        EpisodeDataset([{"image": torch.rand(1, 8, 8), "label": torch.zeros(2, 8, 8)}])


def test_slices_of_volumes_are_2d_episodes():
    data = scenes(3, [1, 2], shape=(32, 32, 32))
    ds = EpisodeDataset(data, classes=[1, 2], num_episodes=10, slice_axis=-1, min_pixels=5, seed=0, fixed=True)
    for i in range(len(ds)):
        ep = ds[i]
        assert ep["image"].shape == (1, 32, 32) and ep["support_label"].shape == (1, 1, 32, 32)
        assert ep["support_label"].sum() >= 5
    whole = EpisodeDataset(data, classes=[1, 2], num_episodes=2, seed=0, fixed=True)
    assert whole[0]["image"].shape == (1, 32, 32, 32)


def test_evaluation_episodes_carry_names_and_extra_keys_sliced_like_the_label():
    data = scenes(3, [1, 2], shape=(32, 32, 32))
    for i, d in enumerate(data):
        d["body"] = torch.arange(32.0).expand(1, 32, 32, 32) + 100 * i  # slice index + 100 * item, to find it
    ds = EpisodeDataset(data, classes=[1, 2], num_episodes=6, slice_axis=-1, seed=0, fixed=True, extra_keys=["body"])
    for i in range(len(ds)):
        ep = ds[i]
        assert ep["body"].shape == (1, 32, 32)
        item, z = divmod(int(ep["body"][0, 0, 0]), 100)
        assert ep["query_name"] == f"item {item}:{z}"  # plain tensors have no file name: the item index
        torch.testing.assert_close(ep["label"], (data[item]["label"][..., z] == ep["class"]).float())
        assert ep["support_name"].startswith("item ") and ep["support_name"] != ep["query_name"]
    with pytest.raises(KeyError, match="has no 'mask'"):
        EpisodeDataset(data, num_episodes=1, seed=0, fixed=True, extra_keys=["mask"])[0]


def test_kmeans_pseudo_classes_are_appearance_classes_across_regions():
    image = torch.full((1, 40, 40), 0.1)
    image[:, 4:12, 4:12] = 0.9  # two separate bright squares: one appearance class
    image[:, 28:36, 28:36] = 0.9
    image[:, 4:12, 28:36] = 0.5  # a grey square: another
    label = SuperpixelLabeld("image", method="kmeans", n_segments=3)({"image": image})["label"][0]
    assert label.shape == (40, 40) and set(torch.unique(label).tolist()) == {1, 2, 3}
    assert label[8, 8] == label[32, 32] != label[8, 32] != label[20, 20]
    felz = SuperpixelLabeld("image")({"image": image})["label"][0]
    assert felz[8, 8] != felz[32, 32]  # superpixels are connected regions


def test_superpixel_episodes_are_two_views_of_one_region():
    image, _ = oneshot_scene((48, 48), 0, [1, 2, 3])
    pseudo = SuperpixelLabeld("image")({"image": torch.from_numpy(image)})
    assert pseudo["label"].shape == (1, 48, 48) and int(pseudo["label"].max()) > 3
    crop = RandSpatialCropd(["image", "label"], (32, 32), random_size=False)
    ds = EpisodeDataset([pseudo], pairing="image", num_episodes=20, min_pixels=10, transform=crop, seed=0)
    for i in range(len(ds)):
        ep = ds[i]
        assert ep["image"].shape == (1, 32, 32) and ep["support_image"].shape == (1, 1, 32, 32)
        assert ep["support_label"].sum() > 0  # the transform is re-drawn until the support keeps the region


def test_support_transform_that_always_loses_the_class_is_an_error():
    data = scenes(4, [1, 2])
    blank = Compose([lambda d: {**d, "label": torch.zeros_like(d["label"])}])
    ds = EpisodeDataset(data, num_episodes=2, transform=blank)
    with pytest.raises(ValueError, match="vanished from the support"):
        ds[0]


@pytest.fixture
def support_files(tmp_path):
    image, label = oneshot_scene((32, 32), 0, [1, 2])
    Image.fromarray((image[0] * 255).astype(np.uint8)).save(tmp_path / "s.png")
    Image.fromarray(label).save(tmp_path / "s_label.png")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "small_label.png")
    return tmp_path


def load_transform():
    return Compose([LoadImaged("image", image_only=True, ensure_channel_first=True), EnsureTyped("image")])


def test_load_support_binarises_the_class(support_files):
    img, mask = load_support(support_files / "s.png", support_files / "s_label.png", load_transform(), 2)
    label = np.asarray(Image.open(support_files / "s_label.png")).T  # MONAI's PIL reader gives [W, H]
    assert img.shape == mask.shape == (1, 32, 32)
    np.testing.assert_array_equal(mask[0].numpy(), (label == 2).astype(np.float32))
    _, any_mask = load_support(support_files / "s.png", support_files / "s_label.png", load_transform())
    np.testing.assert_array_equal(any_mask[0].numpy(), (label > 0).astype(np.float32))


def test_load_support_errors_name_the_file(support_files):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_support(support_files / "missing.png", support_files / "s_label.png", load_transform())
    with pytest.raises(ValueError, match=r"s_label.png: the support label holds no pixel of class 7"):
        load_support(support_files / "s.png", support_files / "s_label.png", load_transform(), 7)
    with pytest.raises(ValueError, match="small_label.png: label grid"):
        load_support(support_files / "s.png", support_files / "small_label.png", load_transform())
    nib.save(nib.Nifti1Image(np.zeros((32, 32, 2), np.uint8), np.eye(4)), support_files / "two.nii.gz")
    with pytest.raises(ValueError, match="two.nii.gz"):
        load_support(support_files / "s.png", support_files / "two.nii.gz", load_transform())
    Image.fromarray(np.full((32, 32), 3, np.uint8)).save(support_files / "full_label.png")
    with pytest.raises(ValueError, match=r"full_label\.png: the support mask covers the whole image"):
        load_support(support_files / "s.png", support_files / "full_label.png", load_transform())
