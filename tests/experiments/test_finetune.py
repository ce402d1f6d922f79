"""Fine-tuning pieces of the label-efficiency study: nested subsets, the step budget, the transfer check and the
validation curve, on the real ``unetr_seg`` bundle where it matters."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigWorkflow
from monai.handlers import MetricLogger

from maskseg_monai.data import ensure_demo_datalist, load_datalist
from maskseg_monai.experiments import bundle_config_file, read_bundle
from maskseg_monai.experiments.finetune import (
    FinetuneMonitor,
    TransferLog,
    finetune_schedule,
    nested_subsets,
    transfer_columns,
    write_subset_datalist,
)
from maskseg_monai.networks import UNETR
from maskseg_monai.networks.transfer import TransferReport, load_pretrained_encoder
from maskseg_monai.networks.transfer import logger as transfer_logger

TINY = {"hidden_size": 48, "mlp_dim": 96, "num_layers": 4, "num_heads": 4, "feature_size": 8, "batch_size": 4}


@pytest.fixture(scope="module")
def nuclei(tmp_path_factory) -> Path:
    return Path(ensure_demo_datalist(tmp_path_factory.mktemp("demo"), "nuclei2d"))


def _encoder_file(path: Path, extra: dict | None = None) -> str:
    """A bare ViT state dict of a UNETR of the TINY sizes, as a MONAI ViT checkpoint holds it."""
    torch.manual_seed(123)  # not the bundle's seed: its weights differ from a fresh network's
    net = UNETR(1, 2, 64, patch_size=8, feature_size=8, hidden_size=48, mlp_dim=96, num_heads=4, num_layers=4,
                spatial_dims=2)  # fmt: skip
    torch.save({**net.vit.state_dict(), **(extra or {})}, path)
    return str(path)


def test_nested_subsets_are_seeded_and_nested():
    subsets = nested_subsets(48, [8, 2, 16, 4], seed=3)
    assert list(subsets) == [2, 4, 8, 16]
    assert all(len(v) == k and v == sorted(v) and len(set(v)) == k for k, v in subsets.items())
    assert set(subsets[2]) <= set(subsets[4]) <= set(subsets[8]) <= set(subsets[16])
    assert nested_subsets(48, [2, 4], seed=3) == {2: subsets[2], 4: subsets[4]}  # the same choice for the same seed
    assert nested_subsets(48, [16], seed=4)[16] != subsets[16]


@pytest.mark.parametrize(
    "labels, match", [([2, 2], "distinct"), ([0, 2], "distinct"), ([], "distinct"), ([4, 49], "48 training items")]
)
def test_nested_subsets_ill_args(labels, match):
    with pytest.raises(ValueError, match=match):
        nested_subsets(48, labels, seed=0)


def test_write_subset_datalist(nuclei, tmp_path):
    path = write_subset_datalist(nuclei, [5, 1], tmp_path / "sub" / "k2.json")
    content = json.loads(Path(path).read_text())
    assert content["training_indices"] == [5, 1] and content["labels"] == {"0": "background", "1": "nucleus"}
    full = load_datalist(nuclei, "training")
    sub = load_datalist(path, "training")  # absolute paths: read from its own folder, they still point at the data
    assert sub == [full[5], full[1]] and all(Path(item["image"]).is_file() for item in sub)
    assert load_datalist(path, "validation") == load_datalist(nuclei, "validation")
    with pytest.raises(ValueError, match="out of range"):
        write_subset_datalist(nuclei, [48], tmp_path / "bad.json")
    empty = tmp_path / "no_val.json"
    empty.write_text(json.dumps({**json.loads(Path(nuclei).read_text()), "validation": []}))
    with pytest.raises(ValueError, match="'validation' list, which is empty"):
        write_subset_datalist(empty, [0], tmp_path / "bad.json")


@pytest.mark.parametrize("k", [2, 3, 13])
def test_schedule_gives_the_same_steps_for_every_k(nuclei, tmp_path, k):
    subset = write_subset_datalist(nuclei, list(range(k)), tmp_path / f"k{k}.json")
    schedule = finetune_schedule(24, validations=4, warmup=0.25)
    assert schedule["epochs"] == 4 and schedule["warmup_epochs"] == 1.0 and schedule["val_interval"] == 1
    parser = read_bundle(bundle_config_file("unetr_seg"), {**TINY, **schedule, "datalist": subset})
    loader = parser.get_parsed_content("train#dataloader")
    assert len(loader) == 6  # 24 steps / 4 epochs, with batch 4, whatever k is
    assert sum(len(batch["image"]) for batch in loader) == 24
    scheduler = parser.get_parsed_content("lr_scheduler")
    assert scheduler.warmup_steps == 6 and scheduler.t_total == 24  # 0.25 of the budget


@pytest.mark.parametrize(
    "steps, validations, warmup, match",
    [(240, 3, 0.05, "even"), (240, 0, 0.05, "even"), (6, 4, 0.05, "multiple"), (240, 4, 1.0, r"\[0, 1\)")],
)
def test_schedule_ill_args(steps, validations, warmup, match):
    with pytest.raises(ValueError, match=match):
        finetune_schedule(steps, validations, warmup)


def test_transfer_columns():
    clean = TransferReport("/x/encoder.pt", loaded=["a", "b"])
    assert transfer_columns([clean], "/x/encoder.pt", "run") == {
        "encoder_loaded": 2, "encoder_tensors": 2, "encoder_missing": 0, "encoder_unexpected": 0,
    }  # fmt: skip
    assert transfer_columns([], None, "run") == dict.fromkeys(transfer_columns([], None, "run"), 0)
    with pytest.raises(RuntimeError, match="from scratch, but an encoder was loaded"):
        transfer_columns([clean], None, "run")
    with pytest.raises(RuntimeError, match="must load /x/encoder.pt once.*none"):
        transfer_columns([], "/x/encoder.pt", "run")
    with pytest.raises(RuntimeError, match="must load /y/encoder.pt once"):
        transfer_columns([clean], "/y/encoder.pt", "run")
    for bad in ({"missing": ["c"]}, {"unexpected": ["cls_token"]}, {"shape_mismatch": [("c", (1,), (2,))]}):
        with pytest.raises(RuntimeError, match="run: the encoder did not transfer whole"):
            transfer_columns([TransferReport("/x/encoder.pt", loaded=["a"], **bad)], "/x/encoder.pt", "run")


def test_transfer_log_collects_loads_whatever_the_logger_level(tmp_path):
    path = _encoder_file(tmp_path / "enc.pt")
    net = UNETR(1, 2, 64, patch_size=8, feature_size=8, hidden_size=48, mlp_dim=96, num_heads=4, num_layers=4,
                spatial_dims=2)  # fmt: skip
    transfer_logger.setLevel(logging.WARNING)  # an INFO record would not even be made
    try:
        with TransferLog() as log:
            report = load_pretrained_encoder(net, path)
        assert log.reports == [report] and not log.reports[0].missing
        assert transfer_logger.level == logging.WARNING and log not in transfer_logger.handlers
        load_pretrained_encoder(net, path)
        assert len(log.reports) == 1  # closed: nothing more collected
    finally:
        transfer_logger.setLevel(logging.NOTSET)


def test_monitor_columns_from_the_curve():
    monitor = FinetuneMonitor("run", None)
    monitor.history, monitor.metric = MetricLogger(), "val_mean_dice"
    monitor.history.loss = [(i, 1.0 - 0.1 * i) for i in range(1, 9)]  # 0.9 ... 0.2
    monitor.history.metrics["val_mean_dice"] = [(2, 0.2), (4, 0.4), (6, 0.5), (8, 0.55)]
    out = monitor.columns()
    assert out["val_dice_mid"] == 0.4 and out["val_dice_last"] == 0.55  # after 4 of 8 steps, and at the end
    assert out["train_loss_mid"] == pytest.approx(0.65) and out["train_loss_last"] == pytest.approx(0.25)
    assert out["val_dice_curve"] == "2:0.2000 4:0.4000 6:0.5000 8:0.5500"
    empty = FinetuneMonitor("run", None).columns()
    assert math.isnan(empty["val_dice_mid"]) and empty["val_dice_curve"] == ""


def _initialised(root: Path, subset: str, encoder: str, monitor: FinetuneMonitor) -> ConfigWorkflow:
    over = {**TINY, **finetune_schedule(4, 2), "datalist": subset, "bundle_root": str(root), "resume": False,
            "pretrained_encoder": encoder}  # fmt: skip
    workflow = ConfigWorkflow(config_file=str(bundle_config_file("unetr_seg")), workflow_type="train", **over)
    with monitor:
        workflow.initialize()
        monitor(workflow)
    return workflow


def test_monitor_on_the_bundle(nuclei, tmp_path):
    subset = write_subset_datalist(nuclei, [0, 1], tmp_path / "k2.json")
    path = _encoder_file(tmp_path / "enc.pt")
    scratch, pretrained = FinetuneMonitor("scratch", None), FinetuneMonitor("mae", path)
    nets = [
        _initialised(tmp_path / name, subset, enc, mon).parser.get_parsed_content("network")
        for name, enc, mon in (("scratch", "", scratch), ("mae", path, pretrained))
    ]
    assert pretrained.transfer["encoder_loaded"] == pretrained.transfer["encoder_tensors"] > 0
    assert scratch.transfer["encoder_loaded"] == 0
    assert pretrained.metric == "val_mean_dice" and pretrained.history is not None
    # the decoder starts from the same weights in both arms; only the encoder differs
    states = [n.state_dict() for n in nets]
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0] if not k.startswith("vit."))
    assert not torch.equal(states[0]["vit.blocks.0.attn.qkv.weight"], states[1]["vit.blocks.0.attn.qkv.weight"])

    # the bundle drops a ViT classifier's cls_token without error; the study does not accept it
    with_cls = _encoder_file(tmp_path / "cls.pt", {"cls_token": torch.zeros(1, 1, 48)})
    with pytest.raises(RuntimeError, match="did not transfer whole(.|\n)*cls_token"):
        _initialised(tmp_path / "cls", subset, with_cls, FinetuneMonitor("mae", with_cls))
