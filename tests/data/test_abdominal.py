"""The SSL-ALPNet abdominal benchmark on tiny stand-ins with the real layouts: BTCV ``RawData/Training`` NIfTI and a
CHAOS ``Train_Sets/MR/<case>/T2SPIR`` DICOM + PNG case, converted, prepared through the shipped manifests (counts
changed), split into folds and evaluated end to end through ``python -m monai.bundle``."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from maskseg_monai.data import prepare_dataset
from maskseg_monai.data.abdominal import (
    ExcludedSlicesDataset,
    ProtocolSlices,
    alpnet_query_chunks,
    alpnet_support_slices,
    exclude_test_slices,
    fold_split,
    main,
    protocol_split,
    write_fold_datalist,
)
from maskseg_monai.data.abdominal_convert import CHAOS_T2SPIR_IDS, convert_btcv, convert_chaos, resample_linear
from maskseg_monai.data.episodes import EpisodeDataset
from maskseg_monai.metrics.abdominal import PUBLISHED_DICE, dice_from_counts, read_volume_rows, summarize_protocol
from maskseg_monai.utils import BadInputError

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "bundles" / "oneshot" / "configs"
BTCV_IDS = (1, 2, 3, 21, 22, 40)  # a gap in the numbering, as BTCV's 0010 -> 0021
SHAPE = (36, 36, 12)  # 2-pixel border cut (36 / 16), then 32 x 32: the in-plane resampling is exact
BASE_HU = {6: 60, 1: 110, 2: 160, 3: 210}  # BTCV liver, spleen, right kidney, left kidney
BOXES = {6: (slice(8, 20), slice(8, 20)), 1: (slice(22, 32), slice(8, 16)), 2: (slice(8, 14), slice(24, 32)),
         3: (slice(22, 30), slice(24, 32))}  # fmt: skip
CHUNK_HU = 12  # organ intensity rises by this per ALPNet chunk: the oracle needs the support of the right chunk
SMALL = ["--channels", "[8,16,16,16,16]", "--seg_channels", "16"]


def alp_chunk(z: int, zmin: int, zmax: int, npart: int = 3) -> int:
    """ALPNet's ``ValidationDataset.__getitem__`` part assignment, transcribed literally."""
    try:
        part_assign = int((z - zmin) // ((zmax - zmin) / npart))
    except ZeroDivisionError:
        part_assign = 0
    return min(max(part_assign, 0), npart - 1)


def alp_support(zlist: list[int], npart: int = 3) -> list[int]:
    """ALPNet's ``ManualAnnoDataset.get_support`` slice choice, transcribed literally."""
    if npart == 1:
        pcts = [0.5]
    else:
        half_part = 1 / (npart * 2)
        part_interval = (1.0 - 1.0 / npart) / (npart - 1)
        pcts = [half_part + part_interval * ii for ii in range(npart)]
    return [zlist[int(pcts[p] * len(zlist))] for p in range(npart)]


def btcv_case(case: int) -> tuple[np.ndarray, np.ndarray, dict[int, tuple[int, int]]]:
    """HU volume, BTCV labels and each organ's z-range: air, a bone block (window top), four organs whose HU grow
    by chunk, a gallbladder (BTCV 4, background in the scheme) and liver-HU decoys outside the liver's z-range."""
    rng = np.random.default_rng(case)
    hu = np.full(SHAPE, -1000, np.int16)
    lab = np.zeros(SHAPE, np.uint8)
    hu[3:7, 3:7] = 500
    ranges = {}
    for value, (bx, by) in BOXES.items():
        zmin = int(rng.integers(1, 4))
        zmax = int(rng.integers(zmin + 4, SHAPE[2] - 1))
        ranges[value] = (zmin, zmax)
        for z in range(zmin, zmax + 1):
            hu[bx, by, z] = BASE_HU[value] + CHUNK_HU * alp_chunk(z, zmin, zmax)
            lab[bx, by, z] = value
    zmin, zmax = ranges[6]
    for z in [*range(0, zmin), *range(zmax + 1, SHAPE[2])]:
        hu[BOXES[6][0], BOXES[6][1], z] = BASE_HU[6]  # decoy: liver intensity, unlabelled, never scored
    hu[28:32, 18:22, 4:8], lab[28:32, 18:22, 4:8] = 20, 4
    return hu, lab, ranges


@pytest.fixture(scope="module")
def btcv(tmp_path_factory) -> dict:
    """The stand-in download, its conversion and the prepared datalist."""
    root = tmp_path_factory.mktemp("btcv")
    raw = root / "raw" / "RawData" / "Training"
    (raw / "img").mkdir(parents=True)
    (raw / "label").mkdir()
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    ranges = {}
    for case in BTCV_IDS:
        hu, lab, ranges[case] = btcv_case(case)
        nib.save(nib.Nifti1Image(hu, affine), str(raw / "img" / f"img{case:04d}.nii.gz"))
        nib.save(nib.Nifti1Image(lab, affine), str(raw / "label" / f"label{case:04d}.nii.gz"))
    out = root / "converted"
    convert_btcv(root / "raw", out, size=32)
    manifest = json.loads((REPO / "data_manifests" / "synapse_btcv_abdomen_ct.json").read_text())
    for entry in manifest["files"]:
        if "glob" in entry:
            entry["count"] = len(BTCV_IDS)
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.warns(UserWarning, match="unverified"):
        datalist = prepare_dataset(root / "manifest.json", out)
    return {"root": root, "out": out, "datalist": datalist, "ranges": ranges, "affine": affine}


def test_btcv_conversion_remaps_labels_keeps_geometry_and_windows(btcv):
    out = btcv["out"]
    record = json.loads((out / "conversion.json").read_text())
    assert record["cases"] == list(BTCV_IDS)
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == [f"btcv_{c:04d}.nii.gz" for c in BTCV_IDS]
    hu, lab, _ = btcv_case(21)
    img = nib.load(str(out / "imagesTr" / "btcv_0021.nii.gz"))
    seg = np.asarray(nib.load(str(out / "labelsTr" / "btcv_0021.nii.gz")).dataobj)
    assert img.shape == seg.shape == (32, 32, 12) and seg.dtype == np.uint8
    expected = np.zeros_like(lab)
    for src, dst in {6: 1, 1: 2, 3: 3, 2: 4}.items():  # liver, spleen, left kidney, right kidney; gallbladder -> 0
        expected[lab == src] = dst
    np.testing.assert_array_equal(seg, expected[2:34, 2:34])
    window = (np.clip(hu[2:34, 2:34].astype(np.float32), -125, 275) + 125) / 400 * 255
    np.testing.assert_allclose(np.asarray(img.dataobj), window, atol=1e-3)
    np.testing.assert_allclose(img.affine[:3, 3], btcv["affine"][:3, :3] @ [2, 2, 0])  # the cut border's origin
    assert not list(out.rglob(".tmp-*"))


def test_prepared_datalist_holds_every_volume_in_the_scheme(btcv):
    data = json.loads(Path(btcv["datalist"]).read_text())
    assert data["numTraining"] == len(BTCV_IDS) and data["numValidation"] == 0
    assert data["labels"] == {"0": "background", "1": "liver", "2": "spleen", "3": "left_kidney", "4": "right_kidney"}
    assert data["modality"] == {"0": "CT"}


def test_manifest_counts_fail_an_incomplete_copy(btcv, tmp_path):
    """The shipped manifest (30 volumes) refuses the 6-volume stand-in, naming the glob."""
    from maskseg_monai.data import VerificationError

    with pytest.raises(VerificationError, match=r"imagesTr/btcv_\*\.nii\.gz' matched 6 files, expected 30"):
        prepare_dataset(REPO / "data_manifests" / "synapse_btcv_abdomen_ct.json", btcv["out"], tmp_path / "d.json")


def test_resampling_is_simpleitk_linear_with_alpnet_label_rule():
    from scipy.ndimage import map_coordinates

    rng = np.random.default_rng(0)
    vol = rng.normal(size=(20, 17, 5)).astype(np.float32)
    scale, offset, shape = (1.75, 0.5, 1.0), (2.0, 0.0, 0.0), (10, 30, 5)
    grid = np.meshgrid(*(o + np.arange(n) * s for n, s, o in zip(shape, scale, offset)), indexing="ij")
    np.testing.assert_allclose(resample_linear(vol, shape, scale, offset), map_coordinates(vol, grid, order=1),
                               atol=1e-5)  # fmt: skip
    labels = np.array([0, 1, 1, 2], np.uint8)[:, None, None]
    # x = 0.4: 60% label 0 -> 0; 0.6: 60% label 1 -> 1; 1.5: all 1 -> 1; 2.5: half 1, half 2 -> 0 (none > 0.5)
    for x, want in ((0.4, 0), (0.6, 1), (1.5, 1), (2.5, 0), (2.6, 2)):
        assert int(resample_linear(labels, (1, 1, 1), (1.0, 1.0, 1.0), (x, 0.0, 0.0), labels=True)[0, 0, 0]) == want


def test_folds_follow_alpnet():
    btcv30 = [*range(1, 11), *range(21, 41)]
    assert fold_split(btcv30, 0) == {"test": [1, 2, 3, 4, 5, 6], "support": 7, "train": [8, 9, 10, *range(21, 41)]}
    assert fold_split(btcv30, 1)["test"] == [7, 8, 9, 10, 21, 22] and fold_split(btcv30, 1)["support"] == 23
    assert fold_split(btcv30, 4) == {
        "test": list(range(35, 41)),
        "support": 1,
        "train": [*range(2, 11), *range(21, 35)],
    }
    chaos = fold_split(CHAOS_T2SPIR_IDS, 0)
    assert chaos["test"] == [1, 2, 3, 5] and chaos["support"] == 8 and len(chaos["train"]) == 15
    for fold in range(5):  # every volume is a query exactly once over the folds
        split = fold_split(btcv30, fold)
        assert split["support"] not in split["test"] + split["train"] and len(split["train"]) == 23
    assert sorted(c for f in range(5) for c in fold_split(btcv30, f)["test"]) == sorted(btcv30)
    with pytest.raises(ValueError, match=r"fold must be in 0\.\.4, got 5"):
        fold_split(btcv30, 5)
    with pytest.raises(ValueError, match=r"\[3\] appear more than once"):
        fold_split([1, 2, 3, 3, 4, 5, 6], 0)


def test_support_slices_and_chunks_match_alpnet_code():
    rng = np.random.default_rng(1)
    for _ in range(300):
        depth = int(rng.integers(1, 60))
        labelled = rng.random(depth) < rng.uniform(0.05, 1)
        if not labelled.any():
            continue
        zlist = np.flatnonzero(labelled).tolist()
        assert alpnet_support_slices(torch.as_tensor(labelled)).tolist() == alp_support(zlist)
        chunk, scored = alpnet_query_chunks(torch.as_tensor(labelled))
        zmin, zmax = zlist[0], zlist[-1]
        assert chunk.tolist() == [alp_chunk(z, zmin, zmax) for z in range(depth)]
        assert scored.tolist() == [zmin <= z <= zmax for z in range(depth)]
    assert alp_chunk(6, 0, 6) == 2 and alp_chunk(-1, 0, 6) == 0  # clamped


def _volumes(datalist: Path, split: dict) -> list[dict]:
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

    load = Compose([LoadImaged(["image", "label"]), EnsureChannelFirstd(["image", "label"])])
    return [load(dict(item)) for item in [split["support"], *split["queries"]]]


def test_protocol_slices_score_only_the_z_range_with_the_chunks_support(btcv):
    split = protocol_split(btcv["datalist"], fold=4, setting=1)
    assert [Path(q["image"]).name for q in split["queries"]] == ["btcv_0022.nii.gz", "btcv_0040.nii.gz"]
    assert Path(split["support"]["image"]).name == "btcv_0001.nii.gz"  # circular: the first volume
    episodes = ProtocolSlices(_volumes(btcv["datalist"], split), [1, 2, 3, 4])
    ranges = btcv["ranges"]
    scheme_to_btcv = {1: 6, 2: 1, 3: 3, 4: 2}
    assert len(episodes) == sum(ranges[q][scheme_to_btcv[c]][1] - ranges[q][scheme_to_btcv[c]][0] + 1
                                for q in (22, 40) for c in range(1, 5))  # fmt: skip
    for c in range(1, 5):
        s_min, s_max = ranges[1][scheme_to_btcv[c]]
        assert episodes.support_picks[c].tolist() == alp_support(list(range(s_min, s_max + 1)))
    for i in range(len(episodes)):
        ep = episodes[i]
        q = int(ep["query_name"][5:9])
        zmin, zmax = ranges[q][scheme_to_btcv[ep["class"]]]
        assert zmin <= ep["z"] <= zmax and ep["chunk"] == alp_chunk(ep["z"], zmin, zmax)
        assert ep["support_z"] == int(episodes.support_picks[ep["class"]][ep["chunk"]])
        assert ep["image"].shape == (1, 32, 32) and ep["support_image"].shape == (1, 1, 32, 32)
        assert ep["label"].any() and ep["support_label"].any()


def test_dice_is_3d_per_volume_then_mean_over_volumes_then_classes():
    # class 1: two volumes, counts summed over their scored slices; class 2: one volume
    d = dice_from_counts([30, 10, 5], [0, 10, 5], [0, 10, 10])
    np.testing.assert_allclose(d, [1.0, 0.5, 0.4])
    rows = [{"modality": "MR", "setting": 2, "fold": f, "test_group": g, "class": c, "class_name": n, "query": q,
             "dice": float(v)} for f, g, c, n, q, v in ((0, "upper", 1, "liver", "a", d[0]),
                                                      (1, "upper", 1, "liver", "b", d[1]),
                                                      (0, "lower", 3, "left_kidney", "a", d[2]))]  # fmt: skip
    per_class, summary = summarize_protocol(rows)
    assert [(r["class_name"], r["n_volumes"], r["dice_mean"]) for r in per_class] == [
        ("liver", 2, 0.75),
        ("left_kidney", 1, 0.4),
    ]
    assert summary["mean_dice"] == pytest.approx(0.575) and summary["modality"] == "MRI"  # not the pooled 0.633
    assert per_class[0]["published_setting1"] == 76.10 and summary["published_setting2_mean"] == 73.02
    with pytest.raises(ValueError, match="query a class 1 is scored twice"):
        summarize_protocol(rows + rows[:1])
    with pytest.raises(ValueError, match="mix modalities"):
        summarize_protocol(rows + [{**rows[0], "modality": "CT", "query": "c"}])


def test_bad_inputs_name_the_file(btcv, tmp_path):
    split = protocol_split(btcv["datalist"], fold=0, setting=1)
    volumes = _volumes(btcv["datalist"], split)
    raw = dict(volumes[1])
    raw["label"] = raw["label"].clone()
    raw["label"][raw["label"] == 1] = 6  # an unconverted BTCV liver
    with pytest.raises(ValueError, match=r"btcv_0001.*label values \[0, 2, 3, 4, 6\] outside the abdominal scheme"):
        ProtocolSlices([volumes[0], raw], [1])
    empty = dict(volumes[0])
    empty["label"] = torch.where(volumes[0]["label"] == 2, 0, volumes[0]["label"])
    with pytest.raises(ValueError, match=r"btcv_0002.*support volume holds no voxel of test class 2 \(spleen\)"):
        ProtocolSlices([empty, volumes[1]], [1, 2])
    with pytest.raises(ValueError, match="setting 2 removes .* 'lower' .* 'upper'"):
        protocol_split(btcv["datalist"], fold=0, setting=2)
    fold_file = write_fold_datalist(btcv["datalist"], 2, 2, "upper", tmp_path / "f.json")
    with pytest.raises(ValueError, match=r"f\.json: this fold datalist was written for"):
        protocol_split(fold_file, fold=0, setting=2, test_group="upper")
    assert main(["fold-datalist", str(btcv["datalist"]), "--fold", "9", "--output", str(tmp_path / "x.json")]) == 2
    with pytest.raises(BadInputError, match="no 'abdominal' protocol record"):
        exclude_test_slices([], [], btcv["datalist"])


def test_setting2_removes_exactly_the_slices_holding_test_classes(btcv, tmp_path):
    fold_file = write_fold_datalist(btcv["datalist"], fold=0, setting=2, test_group="lower", output=tmp_path / "f.json")
    record = json.loads(fold_file.read_text())
    assert record["abdominal"]["excluded_classes"] == [3, 4] and record["numTraining"] == 4
    assert Path(record["validation"][0]["image"]).name == "btcv_0002.nii.gz"  # the support
    from maskseg_monai.data import load_datalist

    items = load_datalist(fold_file, "training")
    superpixels = [{"image": torch.zeros(1, 32, 32, 12), "label": torch.ones(1, 32, 32, 12, dtype=torch.int32)}
                   for _ in items]  # fmt: skip
    data = exclude_test_slices(superpixels, items, fold_file)
    assert isinstance(data, ExcludedSlicesDataset)
    for i, item in enumerate(items):
        case = int(Path(item["image"]).name[5:9])
        _, lab, ranges = btcv_case(case)
        kidneys = {z for v in (2, 3) for z in range(ranges[v][0], ranges[v][1] + 1)}
        assert set(data.excluded[i].tolist()) == kidneys
        kept = data[i]["label"][0].any(0).any(0)
        assert set(torch.nonzero(~kept).flatten().tolist()) == kidneys
    episodes = EpisodeDataset(data, pairing="image", slice_axis=-1, num_episodes=4)
    for i, s in episodes.entries:
        assert s not in data.excluded[i].tolist()
    setting1 = write_fold_datalist(btcv["datalist"], fold=0, setting=1, output=tmp_path / "s1.json")
    assert exclude_test_slices(superpixels, items, setting1) is superpixels


ORACLE = '''
import torch


class IntensityOracle(torch.nn.Module):
    """Foreground where the query matches the support mask's mean intensity: perfect on the stand-in when the
    support slice comes from the query slice's chunk, and blind to anything else."""

    spatial_dims = 2

    def __init__(self, tolerance=0.015):
        super().__init__()
        self.tolerance = tolerance
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, query, support_image, support_label):
        proto = (support_image * support_label).sum((1, 2, 3, 4)) / support_label.sum((1, 2, 3, 4))
        fg = ((query.mean(1) - proto[:, None, None]).abs() < self.tolerance).float()
        return torch.stack([1 - fg, fg], 1) * 10
'''


def _bundle(args: list[str], configs: list[Path], env: dict | None = None) -> str:
    cmd = [sys.executable, "-m", "monai.bundle", *args, "--config_file", str([str(c) for c in configs]),
           "--meta_file", str(CONFIGS / "metadata.json"), "--logging_file", str(CONFIGS / "logging.conf")]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout + proc.stderr


def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_evaluate_config_end_to_end_oracle_scores_one(btcv, tmp_path):
    """The bundle run with a network that is perfect only when query chunk i gets support chunk i's slice and only
    the z-range is scored (the liver decoys outside it would be false positives): Dice 1 for every class."""
    (tmp_path / "oracle_net.py").write_text(ORACLE)
    (tmp_path / "oracle.json").write_text(json.dumps({"network_def": {"_target_": "oracle_net.IntensityOracle"}}))
    (tmp_path / "models").mkdir()
    torch.save({"unused": torch.zeros(1)}, tmp_path / "models" / "model.pt")
    log = _bundle(["run", "evaluating", "--bundle_root", str(tmp_path), "--datalist", str(btcv["datalist"]),
                   "--fold", "4", "--setting", "1"],
                  [CONFIGS / "train.json", CONFIGS / "evaluate_abdominal.json", tmp_path / "oracle.json"],
                  env={"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])})  # fmt: skip
    assert "SSL-ALPNet protocol: CT, setting 1 (all), fold 4 of 5; support btcv_0001.nii.gz, 2 query volume(s)" in log
    out = tmp_path / "eval_abdominal" / "setting1_all_fold4"
    volumes = _csv(out / "per_volume.csv")
    assert len(volumes) == 8 and {r["query"] for r in volumes} == {"btcv_0022.nii.gz", "btcv_0040.nii.gz"}
    assert all(float(r["dice"]) == 1.0 and r["support"] == "btcv_0001.nii.gz" for r in volumes)
    ranges, names = btcv["ranges"], {"liver": 6, "spleen": 1, "left_kidney": 3, "right_kidney": 2}
    for r in volumes:
        zmin, zmax = ranges[int(r["query"][5:9])][names[r["class_name"]]]
        assert int(r["n_scored_slices"]) == zmax - zmin + 1 and int(r["fp"]) == 0
    per_class = {r["class_name"]: r for r in _csv(out / "per_class.csv")}
    assert float(per_class["liver"]["published_setting1"]) == 78.29 and per_class["liver"]["published_setting2"] == ""
    assert float(per_class["right_kidney"]["dice_percent"]) == 100.0
    summary = {r["metric"]: r["value"] for r in _csv(out / "summary.csv")}
    assert float(summary["mean_dice"]) == 1.0 and float(summary["published_setting1_mean"]) == 73.35
    assert float(summary["published_setting2_mean"]) == PUBLISHED_DICE["CT"][2]["mean"]
    assert not list(out.glob(".tmp-*"))
    assert main(["summarize", str(out), "--output", str(tmp_path / "all")]) == 0
    assert len(read_volume_rows([tmp_path / "all" / "per_volume.csv"])) == 8


def test_setting2_training_override_then_evaluation_with_the_trained_model(btcv, tmp_path, monkeypatch, caplog):
    """The documented setting-2 override trains through ``python -m monai.bundle run training`` on a fold datalist;
    the evaluation config (run in-process here, to keep the test short) scores the fold's kidneys with the trained
    ``model.pt``."""
    from monai.bundle import run

    fold_file = write_fold_datalist(btcv["datalist"], fold=0, setting=2, test_group="lower", output=tmp_path / "f.json")
    override = (
        "{'_target_': 'maskseg_monai.data.abdominal.exclude_test_slices', 'data': '@train#cache', "
        "'items': '@train#datalist', 'datalist': '@datalist'}"
    )  # the override the module docstring gives
    log = _bundle(["run", "training", "--bundle_root", str(tmp_path), "--datalist", str(fold_file),
                   "--spatial_dims", "3", "--roi_size", "[32,32]", "--test_classes", "[3,4]",
                   "--train#dataset#data", override, "--epochs", "1", "--episodes_per_epoch", "4",
                   "--batch_size", "4", "--val_episodes", "2", *SMALL],
                  [CONFIGS / "train.json"])  # fmt: skip
    excluded = sum(len({z for v in (2, 3) for z in range(r[v][0], r[v][1] + 1)}) for r in
                   (btcv["ranges"][c] for c in (3, 21, 22, 40)))  # fmt: skip
    assert f"setting 2: {excluded} training slice(s) holding classes [3, 4] excluded from 4 volume(s)" in log
    assert (tmp_path / "models" / "model.pt").is_file()
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # the bundle installs its error hook
    with caplog.at_level("INFO", logger="maskseg_monai.handlers"):
        run("evaluating", config_file=[str(CONFIGS / "train.json"), str(CONFIGS / "evaluate_abdominal.json")],
            meta_file=str(CONFIGS / "metadata.json"), logging_file=False, bundle_root=str(tmp_path),
            datalist=str(fold_file), fold=0, setting=2, test_group="lower", slice_batch_size=8,
            channels=[8, 16, 16, 16, 16], seg_channels=16)  # fmt: skip
    assert "setting 2 fold 0 (lower)" in caplog.text and "published 5-fold mean 63.02%" in caplog.text
    volumes = _csv(tmp_path / "eval_abdominal" / "setting2_lower_fold0" / "per_volume.csv")
    assert [(r["query"], r["class_name"]) for r in volumes] == [("btcv_0001.nii.gz", "left_kidney"),
                                                               ("btcv_0001.nii.gz", "right_kidney")]  # fmt: skip
    assert all(0.0 <= float(r["dice"]) <= 1.0 and r["support"] == "btcv_0002.nii.gz" for r in volumes)


def _write_dicom(path: Path, pixels: np.ndarray, z_mm: float, instance: int, series_uid: str) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID, ds.Modality, ds.InstanceNumber = series_uid, "MR", instance
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.ImagePositionPatient = [0.0, 0.0, float(z_mm)]
    ds.PixelSpacing, ds.SliceThickness = [1.25, 1.25], 7.7
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_chaos_dicom_png_case_converts_to_the_scheme(tmp_path):
    """Masks pair with their DICOM slices by name (file order here runs against the slice order), grey levels
    within CHAOS's ranges map to the scheme, the top 0.5% is clipped, the plane is centre-cropped."""
    case = tmp_path / "raw" / "Train_Sets" / "MR" / "5" / "T2SPIR"
    (case / "DICOM_anon").mkdir(parents=True)
    (case / "Ground").mkdir()
    rows, cols, depth = 36, 34, 6
    grey = np.zeros((rows, cols, depth), np.uint8)
    grey[6:20, 4:16], grey[22:30, 6:12], grey[22:30, 20:28], grey[6:14, 20:30] = 63, 126, 189, 250
    grey[..., 0] = 0  # an empty slice
    pixels = np.where(grey > 0, grey.astype(np.int32) * 4, 10)
    pixels[20, 18] = 4000  # one hot background pixel per slice: clipped at the 99.5th percentile
    uid = generate_uid()
    for k in range(depth):
        name = f"IMG-0005-{depth - k:05d}"  # names descend while positions ascend
        _write_dicom(case / "DICOM_anon" / f"{name}.dcm", pixels[..., k], 7.7 * k, depth - k, uid)
        Image.fromarray(grey[..., k]).save(case / "Ground" / f"{name}.png")
    out = tmp_path / "converted"
    convert_chaos(tmp_path / "raw", out, size=32)
    seg = np.asarray(nib.load(str(out / "labelsTr" / "chaos_0005.nii.gz")).dataobj)
    img = np.asarray(nib.load(str(out / "imagesTr" / "chaos_0005.nii.gz")).dataobj)
    scheme = np.zeros_like(grey)
    for level, value in ((63, 1), (126, 4), (189, 3), (250, 2)):
        scheme[grey == level] = value
    expected = scheme.transpose(1, 0, 2)[1:33, 2:34]  # [X = column, Y = row, Z], centre crop 34 -> 32, 36 -> 32
    assert seg.shape == img.shape == (32, 32, depth)
    np.testing.assert_array_equal(seg, expected)
    assert img.max() == pytest.approx(1000)  # clipped to the spleen's 250 * 4, the top 0.5%
    np.testing.assert_allclose(img[seg == 1], 63 * 4, rtol=1e-5)  # each slice's image and mask stay together
    assert json.loads((out / "conversion.json").read_text())["cases"] == [5]
    manifest = json.loads((REPO / "data_manifests" / "chaos_mri_t2spir.json").read_text())
    for entry in manifest["files"]:
        if "glob" in entry:
            entry["count"] = 1
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    with pytest.warns(UserWarning, match="unverified"):
        data = json.loads(prepare_dataset(tmp_path / "m.json", out).read_text())
    assert data["modality"] == {"0": "MR"} and data["numTraining"] == 1
    Image.fromarray(np.full((rows, cols), 90, np.uint8)).save(case / "Ground" / "IMG-0005-00003.png")
    with pytest.raises(BadInputError, match=r"IMG-0005-00003\.png: grey levels \[90\] are not CHAOS MR classes"):
        convert_chaos(tmp_path / "raw", out, size=32)
    assert not (out / "conversion.json").exists()  # an interrupted conversion is never certified
    (case / "Ground" / "IMG-0005-00003.png").unlink()
    with pytest.raises(BadInputError, match=r"Ground: no mask for 1 of 6 DICOM slices"):
        convert_chaos(tmp_path / "raw", out, size=32)
