"""``python -m maskseg_monai.export``: each bundle's network (the ViT encoder of MAE/AMLP) through ``torch.export``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from maskseg_monai.export import example_inputs, export_network
from maskseg_monai.networks.transfer import find_encoder

REPO = Path(__file__).resolve().parents[1]

SMALL = {"hidden_size": 48, "mlp_dim": 96, "num_layers": 4, "num_heads": 4}
CASES = [("unetr_seg", False), ("oneshot", False), ("mae", True), ("amlp", True)]


def bundle_network(bundle: str) -> torch.nn.Module:
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / bundle / "configs" / "inference.json"))
    parser.update(SMALL)
    return parser.get_parsed_content("network_def").eval()


@pytest.mark.parametrize("bundle, encoder", CASES)
def test_exported_program_equals_the_eager_network_with_the_checkpoint_weights(bundle, encoder, tmp_path):
    configs = REPO / "bundles" / bundle / "configs"
    trained = bundle_network(bundle)
    with torch.no_grad():  # weights that differ from a fresh network's, as a trained checkpoint's do
        for p in trained.parameters():
            p.add_(0.01 * torch.randn_like(p))
    ckpt = tmp_path / "model.pt"
    torch.save({"model": trained.state_dict()}, ckpt)
    out = tmp_path / "model.pt2"
    report = export_network(configs / "inference.json", configs / "metadata.json", out, ckpt, encoder=encoder,
                            overrides=SMALL)  # fmt: skip
    assert report["max_abs_diff"] <= 1e-4 and out.is_file()

    program = torch.export.load(str(out)).module()
    inputs = example_inputs(json.loads((configs / "metadata.json").read_text()), seed=1)  # not the export's inputs
    eager = find_encoder(trained) if encoder else trained
    with torch.no_grad():
        expected = eager(inputs[0])[0] if encoder else trained(*inputs)
        got = program(*inputs[:1]) if encoder else program(*inputs)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_weights_that_do_not_fit_are_named_and_nothing_is_written(tmp_path):
    configs = REPO / "bundles" / "unetr_seg" / "configs"
    ckpt = tmp_path / "model.pt"
    torch.save({"model": {"vit.bogus": torch.zeros(1)}}, ckpt)
    with pytest.raises(RuntimeError, match="model.pt: the weights do not fit"):
        export_network(configs / "inference.json", configs / "metadata.json", tmp_path / "m.pt2", ckpt, overrides=SMALL)
    assert not (tmp_path / "m.pt2").exists()


def test_symbolic_sizes_and_bad_ones():
    meta = {"network_data_format": {"inputs": {
        "image": {"num_channels": 1, "spatial_shape": ["2*n", 16], "value_range": [0, 1]},
        "mask": {"num_channels": 1, "spatial_shape": ["2*n", 16], "format": "labels"},
    }}}  # fmt: skip
    image, mask = example_inputs(meta, n=8)
    assert image.shape == mask.shape == (1, 1, 16, 16) and set(mask.unique().tolist()) <= {0.0, 1.0}
    meta["network_data_format"]["inputs"]["image"]["spatial_shape"] = ["n+1", 16]
    with pytest.raises(ValueError, match="inputs.image: spatial size 'n\\+1'"):
        example_inputs(meta)


def test_command_runs_from_the_bundle_folder(tmp_path):
    cmd = [sys.executable, "-m", "maskseg_monai.export", "--config_file", "configs/inference.json",
           "--meta_file", "configs/metadata.json", "--filepath", str(tmp_path / "encoder.pt2"), "--encoder",
           *[f"--override={k}={v}" for k, v in SMALL.items()]]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO / "bundles" / "mae", capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "-> output [1, 64, 48], max |exported - eager| = 0" in proc.stdout
    assert (tmp_path / "encoder.pt2").is_file()
