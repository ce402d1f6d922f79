"""Bad input through the command lines (issue 9): one clear error naming the file, a non-zero exit, no partial output.

One row per (workflow, case) in ``CASES``: the bundle CLI run (``run_bundle``, tiny networks, tiny datalists written
under ``tmp_path``), the message it must print (naming the file or key and the problem) or ``ACCEPTED`` for valid
input, then checks on the exit status, the last lines of the output and the output folders. The one-shot bundle's
empty support mask is tested in ``tests/bundles/test_oneshot_bundle.py``. The README's "Bad input and errors"
table lists the same rows.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from bundle_cli import REPO, TINY, run_bundle
from conftest import write_mni_series
from monai.bundle import ConfigParser
from PIL import Image

from maskseg_monai.data.demo import demo_dicom_series_dir

UNETR_TINY = ["--hidden_size", "48", "--mlp_dim", "96", "--num_layers", "4", "--num_heads", "4", "--feature_size", "8"]
TINY_ARGS = {"mae": TINY, "amlp": TINY, "unetr_seg": UNETR_TINY}
ACCEPTED = "accepted"
OUTPUT_DIRS = ("models", "outputs", "eval", "runs")


def _png(path: Path, array: np.ndarray) -> str:
    Image.fromarray(array).save(path)
    return path.name


def _truncated(path: Path, source: Path) -> str:
    data = source.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path.name


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Good and bad inputs in one folder: 64 x 64 PNG images with 0/1 labels, and one file per bad case."""
    d = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    label = np.zeros((64, 64), np.uint8)
    label[10:30, 12:40] = 1
    for i in range(3):
        _png(d / f"img{i}.png", (rng.random((64, 64)) * 255).astype(np.uint8))
        _png(d / f"lab{i}.png", label)
    _png(d / "lab255.png", label * 255)
    _png(d / "lab_small.png", label[:48, :48])
    _png(d / "rgb.png", (rng.random((64, 64, 3)) * 255).astype(np.uint8))
    _png(d / "constant.png", np.full((64, 64), 128, np.uint8))
    _png(d / "small.png", (rng.random((40, 40)) * 255).astype(np.uint8))
    (d / "fake.png").write_text("not an image, despite the extension\n")
    nan = rng.random((64, 64)).astype(np.float32)
    nan[5, 7] = np.nan
    nib.save(nib.Nifti1Image(nan, np.eye(4)), d / "nan.nii.gz")
    nib.save(nib.Nifti1Image(rng.random((64, 64)).astype(np.float32), np.eye(4)), d / "whole2d.nii.gz")
    _truncated(d / "trunc.nii.gz", d / "whole2d.nii.gz")
    nib.save(nib.Nifti1Image(rng.random((40, 36, 20)).astype(np.float32), np.eye(4)), d / "whole3d.nii.gz")
    _truncated(d / "trunc3d.nii.gz", d / "whole3d.nii.gz")
    two = d / "two_series"  # pydicom's CT5N plus a copy under another SeriesInstanceUID
    two.mkdir()
    for p in demo_dicom_series_dir().iterdir():
        shutil.copy(p, two / p.name)
        ds = pydicom.dcmread(p)
        ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.1"
        ds.SOPInstanceUID = f"{ds.SeriesInstanceUID}.{p.name}"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(two / f"other_{p.name}")
    missing = d / "mni_missing_slice"  # the MNI template as an 8 mm MR series, one middle slice removed
    files = write_mni_series(missing, step=8)
    files[len(files) // 2].unlink()
    return d


def _datalist(root: Path, data: Path, training: list[str], labels: list[str] | None = None) -> str:
    """A datalist file under ``root``: the given training images (and labels), one good validation item."""

    def item(i: int, name: str) -> dict[str, str]:
        it = {"image": str(data / name)}
        if labels is not None:
            it["label"] = str(data / labels[i])
        return it

    val = {"image": str(data / "img0.png")} | ({"label": str(data / "lab0.png")} if labels is not None else {})
    path = root / "datalist.json"
    path.write_text(json.dumps({"training": [item(i, n) for i, n in enumerate(training)], "validation": [val]}))
    return str(path)


def _checkpoint(bundle: str, root: Path, *overrides: str) -> None:
    """``root/models/model.pt`` of the bundle's tiny network (random weights), as training writes it."""
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / bundle / "configs" / "train.json"))
    args = [*TINY_ARGS[bundle], *overrides]
    for key, value in zip(args[::2], args[1::2]):
        parser[key.lstrip("-")] = int(value) if value.isdigit() else value
    parser.get_parsed_content("imports")
    net = parser.get_parsed_content("network_def")
    (root / "models").mkdir(parents=True, exist_ok=True)
    torch.save({"model": net.state_dict()}, root / "models" / "model.pt")


GOOD = ["img0.png", "img1.png", "img2.png"]
LABELS = ["lab0.png", "lab1.png", "lab2.png"]


def train(images: list[str], labels: list[str] | None = None, *extra: str) -> Callable[[Path, Path], list[str]]:
    def setup(root: Path, data: Path) -> list[str]:
        return ["run", "training", "--datalist", _datalist(root, data, images, labels), "--epochs", "1",
                "--val_interval", "1", "--batch_size", "2", *extra]  # fmt: skip

    return setup


def infer(name: str, *extra: str) -> Callable[[Path, Path], list[str]]:
    def setup(root: Path, data: Path) -> list[str]:
        inputs = root / "inputs"
        inputs.mkdir()
        src = data / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, inputs / name)
        return ["run", "inference", "--input_dir", str(inputs), *extra]

    return setup


def infer_truncated_checkpoint(name: str) -> Callable[[Path, Path], list[str]]:
    def setup(root: Path, data: Path) -> list[str]:
        ckpt = root / "models" / "model.pt"
        ckpt.write_bytes(ckpt.read_bytes()[:1000])
        return infer(name)(root, data)

    return setup


def train_bad_datalist() -> Callable[[Path, Path], list[str]]:
    def setup(root: Path, data: Path) -> list[str]:
        path = root / "datalist.json"
        path.write_text('{"training": [{"image": "img0.png"},]}')  # a trailing comma: not JSON
        return ["run", "training", "--datalist", str(path), "--epochs", "1"]

    return setup


def evaluate(images: list[str], labels: list[str]) -> Callable[[Path, Path], list[str]]:
    def setup(root: Path, data: Path) -> list[str]:
        path = root / "datalist.json"
        items = [{"image": str(data / i), "label": str(data / lb)} for i, lb in zip(images, labels)]
        path.write_text(json.dumps({"training": items, "validation": items}))
        return ["run", "--datalist", str(path)]

    return setup


@dataclass
class Case:
    id: str
    bundle: str
    workflow: str  # training, inference or evaluation
    setup: Callable[[Path, Path], list[str]]
    message: str  # regex naming the file and the problem, or ACCEPTED
    checkpoint: tuple[str, ...] | None = None  # write models/model.pt first, with these overrides
    accepted_log: str = ""  # for ACCEPTED rows: a regex the log must hold


D3 = ("--spatial_dims", "3", "--img_size", "32")
CASES = [
    # training: the datalist is checked while it is cached, before any output is written
    Case("missing-file", "mae", "training", train([*GOOD, "missing.png"]),
         r"missing\.png: no such file \(datalist key 'image'\)"),
    Case("truncated-nifti", "amlp", "training", train([*GOOD, "trunc.nii.gz"]),
         r"trunc\.nii\.gz: cannot read the image \(EOFError"),
    Case("non-image-png", "unetr_seg", "training", train([*GOOD, "fake.png"], [*LABELS, "lab0.png"]),
         r"fake\.png: cannot read the image \("),
    Case("wrong-channels", "amlp", "training", train([*GOOD, "rgb.png"]), r"rgb\.png: expected 1 channel\(s\), got 3"),
    Case("2d-to-3d", "unetr_seg", "training", train(GOOD, LABELS, *D3), r"img0\.png: expected a 3D image"),
    Case("nan-pixels", "mae", "training", train([*GOOD, "nan.nii.gz"]), r"nan\.nii\.gz: the image contains NaN or Inf"),
    Case("labels-out-of-range", "unetr_seg", "training", train(GOOD, [*LABELS[:2], "lab255.png"]),
         r"lab255\.png: label values \[0, 255\] outside the class range 0\.\.1 \(out_channels=2\)"),
    Case("shape-mismatch", "unetr_seg", "training", train(GOOD, [*LABELS[:2], "lab_small.png"]),
         r"img2\.png, \S*lab_small\.png: image and label shapes differ \(spatial \(64, 64\) vs \(48, 48\)\)"),
    Case("invalid-datalist-json", "mae", "training", train_bad_datalist(), r"datalist\.json: not valid JSON"),
    Case("constant-image", "mae", "training", train(["constant.png", *GOOD]), ACCEPTED),
    Case("smaller-than-roi", "amlp", "training", train(["small.png", *GOOD]), ACCEPTED),
    Case("skip-bad-files", "amlp", "training", train([*GOOD, "trunc.nii.gz", "nan.nii.gz"], None,
         "--skip_bad_files", "true"), ACCEPTED,
         accepted_log=r"trunc\.nii\.gz: cannot read(.|\n)*nan\.nii\.gz: the image contains NaN(.|\n)*"
                      r"skipped 2 of 5 training items"),
    Case("skip-bad-files", "unetr_seg", "training", train([*GOOD, "fake.png", "img0.png"],
         [*LABELS, "lab0.png", "lab255.png"], "--skip_bad_files", "true"), ACCEPTED,
         accepted_log=r"fake\.png: cannot read(.|\n)*lab255\.png: label values(.|\n)*skipped 2 of 5 training items"),
    # inference: inputs from --input_dir; the checkpoint is loaded before the first input
    Case("dicom-two-series", "unetr_seg", "inference", infer("two_series", *D3),
         r"two_series: holds 2 DICOM series: .*Pass --series_uid", checkpoint=D3),
    Case("dicom-missing-slice", "unetr_seg", "inference", infer("mni_missing_slice", *D3),
         r"mni_missing_slice: slices are not evenly spaced \(spacing 8\.000 mm, tolerance 1%\): 16\.000 mm between "
         r"slice_011\.dcm \(88\.000 mm\) and slice_013\.dcm \(104\.000 mm\), about 1 slice\(s\) missing",
         checkpoint=D3),
    Case("dicom-missing-slice-allowed", "unetr_seg", "inference",
         infer("mni_missing_slice", *D3, "--allow_irregular_spacing", "true"), ACCEPTED, checkpoint=D3,
         accepted_log=r"resampled 23 slices onto a regular grid of 24 slices"),
    Case("truncated-nifti", "unetr_seg", "inference", infer("trunc3d.nii.gz", *D3),
         r"trunc3d\.nii\.gz: cannot read the image \(EOFError", checkpoint=D3),
    Case("non-image-png", "mae", "inference", infer("fake.png"), r"fake\.png: cannot read the image \(", checkpoint=()),
    Case("constant-image", "amlp", "inference", infer("constant.png"), ACCEPTED, checkpoint=()),
    Case("truncated-checkpoint", "mae", "inference", infer_truncated_checkpoint("img0.png"),
         r"error: \S*models/model\.pt: cannot load the checkpoint \(RuntimeError: PytorchStreamReader", checkpoint=()),
    Case("smaller-than-roi", "unetr_seg", "inference", infer("small.png"), ACCEPTED, checkpoint=()),
    # evaluation: the validation list is checked like the training list
    Case("labels-out-of-range", "unetr_seg", "evaluation", evaluate(["img0.png"], ["lab255.png"]),
         r"lab255\.png: label values \[0, 255\] outside the class range", checkpoint=()),
]  # fmt: skip
CONFIGS = {"training": ("train.json",), "inference": ("train.json", "inference.json"),
           "evaluation": ("train.json", "evaluate.json")}  # fmt: skip


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for d in OUTPUT_DIRS if (root / d).exists() for p in (root / d).rglob("*")}


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.workflow}-{c.bundle}-{c.id}")
def test_bad_input(case: Case, data: Path, tmp_path: Path):
    root = tmp_path / "bundle"
    root.mkdir()
    if case.checkpoint is not None:
        _checkpoint(case.bundle, root, *case.checkpoint)
    args = case.setup(root, data)
    before = _files(root)
    proc = run_bundle(case.bundle, *args, "--bundle_root", str(root), *TINY_ARGS[case.bundle],
                      configs=CONFIGS[case.workflow])  # fmt: skip
    log = proc.stdout + proc.stderr
    after = _files(root)
    assert not [f for f in after if Path(f).name.startswith(".tmp-")], after
    if case.message == ACCEPTED:
        assert proc.returncode == 0, log[-4000:]
        assert re.search(case.accepted_log, log), log[-4000:]
        if case.workflow == "training":
            assert "models/model_final.pt" in after, sorted(after)
        else:
            assert any(f.startswith("outputs/") for f in after), sorted(after)
        return
    assert proc.returncode != 0, log[-4000:]
    last = "\n".join(proc.stderr.strip().splitlines()[-3:])  # the culprit is the last thing printed
    assert re.search(case.message, last), log[-4000:]
    assert after == before, sorted(after - before)  # nothing written: no model, no outputs, no TensorBoard events


def _manifest(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "ds"
    (root / "imagesTr").mkdir(parents=True)
    (root / "imagesTr" / "case_0.nii.gz").write_bytes(b"image bytes")
    manifest = json.loads((REPO / "data_manifests" / "msd_task09_spleen.json").read_text())
    manifest["files"] = [{"path": "imagesTr/case_0.nii.gz", "sha256": "0" * 64}]
    manifest["datalist"] = {"image_glob": "imagesTr/case_*.nii.gz"}
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest))
    return path, root


def test_data_prepare_wrong_checksum(tmp_path):
    manifest, root = _manifest(tmp_path)
    out = tmp_path / "lists" / "datalist.json"
    cmd = [sys.executable, "-m", "maskseg_monai.data", "prepare", str(manifest), "--root", str(root),
           "--output", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert re.search(r"wrong sha256: imagesTr/case_0\.nii\.gz \(expected 000000000000\.\.\., found", proc.stderr)
    assert str(manifest) in proc.stderr and "nothing was written" in proc.stderr
    assert not out.parent.exists() or not list(out.parent.iterdir())


# in-process checks of the pieces behind the table


def test_checked_cache_dataset_fails_on_first_bad_item_or_skips(data, caplog):
    from monai.transforms import Compose, RandFlipd

    from maskseg_monai.data import CheckedCacheDataset
    from maskseg_monai.transforms import CheckedLoadImaged, CheckImaged
    from maskseg_monai.utils import BadInputError

    transform = Compose([CheckedLoadImaged("image", image_only=True, ensure_channel_first=True),
                         CheckImaged("image", spatial_dims=2, channels=1), RandFlipd("image", prob=0.5)])  # fmt: skip
    items = [{"image": str(data / n)} for n in ["img0.png", "trunc.nii.gz", "img1.png", "nan.nii.gz"]]
    with pytest.raises(BadInputError, match=r"trunc\.nii\.gz: cannot read the image .*bad training item 1 of 4"):
        CheckedCacheDataset(items, transform, progress=False)
    with caplog.at_level("WARNING", logger="maskseg_monai.data"):
        ds = CheckedCacheDataset(items, transform, skip_bad_files="true", progress=False)
    assert [Path(it["image"]).name for it in ds.data] == ["img0.png", "img1.png"] and len(ds) == 2
    assert ds[1]["image"].shape == (1, 64, 64) and len(ds.skipped) == 2
    assert "skipped 2 of 4 training items" in caplog.text and "nan.nii.gz: the image contains NaN" in caplog.text
    with pytest.raises(BadInputError, match=r"all 2 validation items are bad"):
        CheckedCacheDataset(items[1::2], transform, skip_bad_files=True, name="validation", progress=False)


def test_check_labeld_names_files_and_values():
    from monai.data import MetaTensor

    from maskseg_monai.transforms import CheckLabeld
    from maskseg_monai.utils import BadInputError

    image = MetaTensor(torch.zeros(1, 8, 8), meta={"filename_or_obj": "a.png"})
    label = MetaTensor(torch.zeros(1, 8, 8), meta={"filename_or_obj": "a_label.png"})
    check = CheckLabeld("label", num_classes=3)
    assert check({"image": image, "label": label + 2})["label"].max() == 2
    with pytest.raises(BadInputError, match=r"a_label\.png: label values \[0, 3\] outside the class range 0\.\.2"):
        check({"image": image, "label": torch.where(torch.eye(8, dtype=torch.bool)[None], label + 3, label)})
    with pytest.raises(BadInputError, match=r"label values \[0, 0\.5\]"):
        check({"image": image, "label": label + torch.eye(8)[None] * 0.5})
    with pytest.raises(BadInputError, match=r"a\.png, a_label\.png: image and label shapes differ"):
        check({"image": image, "label": label[:, :4]})
    with pytest.raises(ValueError, match="num_classes"):
        CheckLabeld("label", num_classes=0)


def test_error_summary_finds_the_culprit_in_a_wrapped_chain():
    from maskseg_monai.utils import BadInputError, error_summary

    try:
        try:
            try:
                raise BadInputError("x.png: the image contains NaN or Inf values.")
            except ValueError as e:
                raise RuntimeError("applying transform <CheckImaged>") from e
        except RuntimeError as e:
            raise RuntimeError("Failed to instantiate component 'CacheDataset'") from e
    except RuntimeError as e:
        assert error_summary(e) == "error: x.png: the image contains NaN or Inf values."
    assert error_summary(RuntimeError("boom")) == "error: RuntimeError: boom"


def test_every_torch_load_uses_weights_only():
    """Untrusted checkpoints: no ``torch.load(`` call in the package without ``weights_only=True``."""
    offenders = []
    for path in sorted((REPO / "maskseg_monai").rglob("*.py")):
        text = path.read_text()
        for m in re.finditer(r"torch\.load\(", text):
            depth, end = 0, m.end() - 1
            for end in range(m.end() - 1, len(text)):  # the call's closing parenthesis
                depth += {"(": 1, ")": -1}.get(text[end], 0)
                if depth == 0:
                    break
            call = text[m.start() : end + 1]
            if "weights_only=True" not in call and "..." not in call:  # "..." : prose in docstrings
                offenders.append(f"{path.relative_to(REPO)}:{text.count(chr(10), 0, m.start()) + 1}: {call}")
    assert not offenders, offenders


def test_dicom_tags_never_name_output_files(tmp_path):
    """A series whose PatientName / SeriesDescription / PatientID hold ``../../evil`` writes only into output_dir."""
    from maskseg_monai.data import inference_inputs
    from maskseg_monai.transforms import LoadMedicalImaged, SaveSegmentationd

    series = tmp_path / "in" / "series"
    series.mkdir(parents=True)
    for p in demo_dicom_series_dir().iterdir():
        ds = pydicom.dcmread(p)
        ds.PatientName = ds.SeriesDescription = ds.PatientID = ds.StudyDescription = "../../evil"
        ds.save_as(series / p.name)
    out = tmp_path / "work" / "out"
    out.mkdir(parents=True)
    before = {p for p in tmp_path.rglob("*")}
    (item,) = inference_inputs(tmp_path / "in")
    d = LoadMedicalImaged("image")(item)
    d["image"] = (d["image"] > d["image"].mean()).to(torch.uint8)
    SaveSegmentationd("image", output_dir=out, dicom_seg=True)(d)
    new = {p for p in tmp_path.rglob("*")} - before
    assert {p.name for p in new} == {"series_seg.nii.gz", "series_seg.dcm"}
    assert all(p.parent == out for p in new), new
    assert not any("evil" in str(p) for p in tmp_path.rglob("*"))


def test_folder_inference_skips_bad_inputs_and_fails_at_the_end(data: Path, tmp_path: Path):
    """``--skip_bad_files true`` at inference: every good input is written, each bad one logged, then exit 1."""
    root = tmp_path / "bundle"
    inputs = root / "inputs"
    inputs.mkdir(parents=True)
    for name in ("img0.png", "fake.png", "img1.png", "rgb.png"):
        shutil.copy(data / name, inputs / name)
    _checkpoint("unetr_seg", root)
    args = ["run", "inference", "--input_dir", str(inputs), "--skip_bad_files", "true", "--bundle_root", str(root)]
    proc = run_bundle("unetr_seg", *args, *UNETR_TINY, configs=CONFIGS["inference"])
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0, log[-4000:]
    assert sorted(p.name for p in (root / "outputs").iterdir()) == ["img0_seg.png", "img1_seg.png"], log[-4000:]
    assert re.search(r"skipping input: \S*fake\.png: cannot read the image", log), log[-4000:]
    assert re.search(r"skipping input: \S*rgb\.png: expected 1 channel\(s\), got 3", log), log[-4000:]
    assert "processed 2, failed 2" in log
    last = "\n".join(proc.stderr.strip().splitlines()[-3:])
    assert re.search(r"error: 2 of 4 inputs failed \(processed 2\); the first: \S*fake\.png: cannot read", last), last
    _checkpoint("unetr_seg", tmp_path / "strict")
    without = run_bundle("unetr_seg", *args[:4], "--bundle_root", str(tmp_path / "strict"), *UNETR_TINY,
                         configs=CONFIGS["inference"])  # fmt: skip
    assert without.returncode != 0 and "fake.png" in without.stderr.strip().splitlines()[-1]
