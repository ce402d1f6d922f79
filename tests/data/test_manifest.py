"""Tests of maskseg_monai.data.manifest and the ``python -m maskseg_monai.data`` command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from monai.data import load_decathlon_datalist

from maskseg_monai.data import ManifestError, VerificationError, load_manifest, materialize_demo, prepare_dataset
from maskseg_monai.data.__main__ import main
from maskseg_monai.data.manifest import MAX_LISTED_PROBLEMS, lock_path

MANIFESTS = Path(__file__).resolve().parents[2] / "data_manifests"
NUCLEI = MANIFESTS / "demo_nuclei2d.json"


@pytest.fixture
def nuclei_root(tmp_path) -> Path:
    materialize_demo(tmp_path, "nuclei2d")
    return tmp_path / "nuclei2d"


def _glob_manifest(tmp_path: Path, n: int = 5) -> tuple[Path, Path]:
    """A small MSD-like dataset described only by globs with counts, and its manifest."""
    root = tmp_path / "msd"
    for folder in ("imagesTr", "labelsTr"):
        (root / folder).mkdir(parents=True)
        for i in range(n):
            (root / folder / f"case_{i}.nii.gz").write_bytes(f"{folder}{i}".encode())
    (root / "imagesTr" / "._case_0.nii.gz").write_bytes(b"macOS resource fork")
    manifest = json.loads((MANIFESTS / "msd_task09_spleen.json").read_text())
    manifest["files"] = [{"glob": "imagesTr/case_*.nii.gz", "count": n}, {"glob": "labelsTr/case_*.nii.gz", "count": n}]
    manifest["datalist"] = {
        "image_glob": "imagesTr/case_*.nii.gz",
        "from_image": {"label": {"pattern": "^imagesTr/", "replace": "labelsTr/"}},
    }
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest))
    return path, root


@pytest.mark.parametrize("path", sorted(MANIFESTS.glob("*.json")), ids=lambda p: p.stem)
def test_shipped_manifests_are_valid(path):
    manifest = load_manifest(path)
    assert manifest["name"] == path.stem and manifest["licence"] and manifest["source_url"].startswith("http")


def test_prepare_passes_on_fresh_demo_set(nuclei_root, tmp_path):
    output = tmp_path / "lists" / "nuclei.json"
    assert prepare_dataset(NUCLEI, nuclei_root, output) == output
    demo = json.loads((nuclei_root / "dataset.json").read_text())
    for split in ("training", "validation"):
        items = load_decathlon_datalist(output, True, split)
        assert len(items) == len(demo[split]) and all(Path(v).is_file() for it in items for v in it.values())
        assert [Path(it["image"]).name for it in items] == [Path(it["image"]).name for it in demo[split]]


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: p.unlink(), "missing: labels/tile_r2_c5.png"),
        (lambda p: p.write_bytes(p.read_bytes()[:-1]), "wrong size: labels/tile_r2_c5.png"),
        (
            lambda p: p.write_bytes(bytes([p.read_bytes()[0] ^ 1]) + p.read_bytes()[1:]),
            "wrong sha256: labels/tile_r2_c5",
        ),
    ],
    ids=["missing", "truncated", "corrupted"],
)
def test_prepare_names_the_bad_file_and_writes_nothing(nuclei_root, tmp_path, damage, message):
    damage(nuclei_root / "labels" / "tile_r2_c5.png")
    output = tmp_path / "out.json"
    with pytest.raises(VerificationError, match=message) as err:
        prepare_dataset(NUCLEI, nuclei_root, output)
    assert len(err.value.problems) >= 1 and not output.exists()


def test_problem_list_is_capped(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(VerificationError) as err:
        prepare_dataset(NUCLEI, tmp_path / "empty")
    assert len(err.value.problems) == 193  # 192 files + no image matched
    assert f"... and {193 - MAX_LISTED_PROBLEMS} more" in str(err.value)


def test_glob_manifest_warns_then_locks(tmp_path):
    manifest, root = _glob_manifest(tmp_path)
    output = tmp_path / "list.json"
    with pytest.warns(UserWarning, match="10 file\\(s\\) are unverified"):
        prepare_dataset(manifest, root, output, val_fraction=0.4, seed=1)
    assert json.loads(output.read_text())["numValidation"] == 2
    prepare_dataset(manifest, root, output, write_checksums=True)
    lock = json.loads(lock_path(output).read_text())
    assert len(lock["files"]) == 10 and "imagesTr/._case_0.nii.gz" not in lock["files"]
    prepare_dataset(manifest, root, output)  # verified against the lock, no warning
    (root / "labelsTr" / "case_3.nii.gz").write_bytes(b"tampered")
    with pytest.raises(VerificationError, match="labelsTr/case_3.nii.gz"):
        prepare_dataset(manifest, root, output)


def test_lock_rejects_new_files_and_counts(tmp_path):
    manifest, root = _glob_manifest(tmp_path)
    output = tmp_path / "list.json"
    prepare_dataset(manifest, root, output, write_checksums=True)
    for folder in ("imagesTr", "labelsTr"):
        (root / folder / "case_9.nii.gz").write_bytes(b"new")
    with pytest.raises(VerificationError) as err:
        prepare_dataset(manifest, root, output)
    text = str(err.value)
    assert "matched 6 files, expected 5" in text and "not in lock file list.lock.json: imagesTr/case_9.nii.gz" in text


def test_missing_derived_label(tmp_path):
    manifest, root = _glob_manifest(tmp_path)
    (root / "labelsTr" / "case_1.nii.gz").rename(root / "case_1.nii.gz")
    with pytest.raises(VerificationError, match="missing label for imagesTr/case_1.nii.gz: labelsTr/case_1.nii.gz"):
        prepare_dataset(manifest, root)


def test_random_split_is_seeded(tmp_path):
    manifest, root = _glob_manifest(tmp_path, n=10)
    lists = []
    for seed in (0, 0, 1):
        with pytest.warns(UserWarning):
            out = prepare_dataset(manifest, root, tmp_path / f"l{len(lists)}.json", val_fraction=0.3, seed=seed)
        lists.append(json.loads(out.read_text())["validation"])
    assert len(lists[0]) == 3 and lists[0] == lists[1] and lists[0] != lists[2]


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda m: m.update(homepage="x"), "'homepage'"),
        (lambda m: m.pop("licence"), "'licence'"),
        (lambda m: m.update(spatial_dims=4), "'spatial_dims'"),
        (lambda m: m["files"][0].update(md5="0" * 32), "'files\\[0\\].md5'"),
        (lambda m: m["files"][1].update(sha256="xyz"), "'files\\[1\\].sha256'"),
        (lambda m: m["files"].append({"path": "../outside.png"}), "'files\\[192\\].path'"),
        (lambda m: m["datalist"].pop("image_glob"), "'datalist.image_glob'"),
        (lambda m: m["datalist"]["split"].update(validation_fraction=0.2), "'datalist.split'"),
        (lambda m: m["datalist"]["from_image"]["label"].update(pattern="("), "'datalist.from_image.label.pattern'"),
    ],
)
def test_bad_manifest_names_path_and_key(tmp_path, edit, key):
    manifest = json.loads(NUCLEI.read_text())
    edit(manifest)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match=f"{path}: .*{key}"):
        load_manifest(path)


def test_cli_demo_in_process(tmp_path, capsys):
    assert main(["demo", "--root", str(tmp_path), "--names", "ct3d", "nuclei2d"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"ct3d: {tmp_path / 'ct3d' / 'dataset.json'}",
        f"nuclei2d: {tmp_path / 'nuclei2d' / 'dataset.json'}",
    ]
    assert main(["demo", "--root", str(tmp_path), "--names", "nope"]) == 2


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "maskseg_monai.data", *args], capture_output=True, text=True)


def test_cli_prepare_exit_codes(nuclei_root, tmp_path):
    output = tmp_path / "nuclei.json"
    ok = _cli("prepare", str(NUCLEI), "--root", str(nuclei_root), "--output", str(output))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == str(output) and output.is_file()

    (nuclei_root / "images" / "tile_r7_c7.png").unlink()
    output.unlink()
    bad = _cli("prepare", str(NUCLEI), "--root", str(nuclei_root), "--output", str(output))
    assert bad.returncode == 1 and not output.exists()
    assert bad.stderr.count("error:") == 1 and "missing: images/tile_r7_c7.png" in bad.stderr

    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({**json.loads(NUCLEI.read_text()), "extra": 1}))
    usage = _cli("prepare", str(broken), "--root", str(nuclei_root))
    assert usage.returncode == 2 and f"{broken}: unknown key 'extra'" in usage.stderr
