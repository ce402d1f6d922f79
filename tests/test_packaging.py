"""The wheel and sdist carry the bundles; installed without the repository, every bundle runs."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest
import setuptools

import maskseg_monai
from maskseg_monai import bundles

REPO = Path(__file__).resolve().parents[1]
VIT = ["--hidden_size", "48", "--mlp_dim", "96", "--num_layers", "4", "--num_heads", "4"]
# one short training per bundle, with the sizes the bundle tests use
RUNS = {
    "mae": ["--epochs", "1", "--steps_per_epoch", "2", "--val_interval", "1", *VIT, "--decoder_hidden_size", "48",
            "--decoder_mlp_dim", "96", "--decoder_num_layers", "1", "--decoder_num_heads", "4"],
    "amlp": ["--epochs", "1", "--steps_per_epoch", "2", "--val_interval", "1", *VIT, "--decoder_hidden_size", "48",
             "--decoder_mlp_dim", "96", "--decoder_num_layers", "1", "--decoder_num_heads", "4"],
    "unetr_seg": ["--epochs", "1", "--val_interval", "1", *VIT, "--feature_size", "8"],
    "oneshot": ["--epochs", "1", "--episodes_per_epoch", "8", "--val_episodes", "4", "--val_interval", "1",
                "--channels", "[8,16,16,16,16]", "--seg_channels", "16"],
}  # fmt: skip


def bundle_files() -> set[str]:
    """The files of ``bundles/`` that ship (tracked in git, not outputs), relative to ``bundles/``."""
    out = subprocess.run(["git", "ls-files", "bundles"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return {line.removeprefix("bundles/") for line in out.splitlines() if line}


def test_the_package_list_is_every_subpackage():
    listed = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    found = setuptools.find_packages(str(REPO), include=["maskseg_monai*"])
    assert sorted(listed) == sorted([*found, "maskseg_monai.bundle_files"])


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """A wheel and an sdist built from this checkout (``python -m build`` calls the same backend hooks)."""
    out = tmp_path_factory.mktemp("dist")
    for hook in ("build_wheel", "build_sdist"):
        code = f"import sys; from setuptools import build_meta; build_meta.{hook}(sys.argv[1])"
        proc = subprocess.run([sys.executable, "-c", code, str(out)], cwd=REPO, capture_output=True, text=True,
                              timeout=600)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_wheel_and_sdist_carry_every_bundle_file(dist):
    version = maskseg_monai.__version__
    (wheel,) = dist.glob(f"maskseg_monai-{version}-py3-none-any.whl")
    (sdist,) = dist.glob(f"maskseg_monai-{version}.tar.gz")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {
        n.removeprefix("maskseg_monai/bundle_files/") for n in names if n.startswith("maskseg_monai/bundle_files/")
    }
    assert shipped == bundle_files()
    assert f"maskseg_monai-{version}.dist-info/licenses/LICENSE" in names
    with tarfile.open(sdist) as tar:
        members = {m.name.split("/", 1)[1] for m in tar.getmembers() if "/" in m.name}
    assert {f"bundles/{f}" for f in bundle_files()} <= members and "LICENSE" in members


@pytest.mark.slow
def test_installed_wheel_runs_every_bundle_outside_the_repository(dist, tmp_path):
    """The wheel installed alone (``pip install --no-deps --target``, put first on the path): the bundles come from
    the installed package, are copied out with ``python -m maskseg_monai.bundles copy`` and each trains."""
    (wheel,) = dist.glob("*.whl")
    site = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)]
    proc = subprocess.run(pip, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    env = {**os.environ, "PYTHONPATH": str(site)}

    def run(*args: str) -> str:
        proc = subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=900)  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
        return proc.stdout

    where = run("-m", "maskseg_monai.bundles", "path", "amlp").strip()
    assert Path(where) == site / "maskseg_monai" / "bundle_files" / "amlp"
    for name, args in RUNS.items():
        copy = Path(run("-m", "maskseg_monai.bundles", "copy", name, str(tmp_path / name)).strip())
        assert sorted(p.relative_to(copy).as_posix() for p in copy.rglob("*") if p.is_file()) == sorted(
            f.removeprefix(f"{name}/") for f in bundle_files() if f.startswith(f"{name}/")
        )
        root = tmp_path / f"{name}_run"
        run("-m", "monai.bundle", "run", "training", "--config_file", str(copy / "configs" / "train.json"),
            "--bundle_root", str(root), *args)  # fmt: skip
        assert (root / "models" / "model_final.pt").is_file(), name
    assert not (REPO / "bundles" / "mae" / "models").exists()


def test_copy_refuses_an_existing_folder_and_names_unknown_bundles(tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError, match="taken exists"):
        bundles.copy_bundle("mae", tmp_path / "taken")
    with pytest.raises(FileNotFoundError, match=r"no bundle 'nope' .* \['amlp', 'mae', 'oneshot', 'unetr_seg'\]"):
        bundles.copy_bundle("nope", tmp_path / "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
