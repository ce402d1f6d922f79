"""The runner's config lookup: the repository's (or the installed) bundles, and a clear error without them."""

from __future__ import annotations

from pathlib import Path

import pytest

from maskseg_monai.experiments import bundle_config_file, bundle_config_files


def test_bundle_config_file_is_the_bundles_train_json():
    path = bundle_config_file("mae")
    assert path.is_file() and path.name == "train.json" and path.parent.parent.name == "mae"
    with pytest.raises(FileNotFoundError, match=r"bundle config .*nope.*--config_file"):
        bundle_config_file("nope")


def test_bundle_config_files_prefer_the_given_files(tmp_path):
    mine = tmp_path / "train.json"
    files = bundle_config_files(("mae", "amlp"), {"amlp": mine, "unetr_seg": str(mine)})
    assert files == {"mae": bundle_config_file("mae"), "amlp": mine, "unetr_seg": Path(mine)}
