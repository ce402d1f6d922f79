"""Resume checkpoints: random-number state, atomic saver, checkpoint lookup and the loader's errors."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.transforms import Compose, RandFlipd, RandSpatialCropd

from maskseg_monai.handlers import AtomicCheckpointSaver, ResumeHandler, RNGState, find_resume_checkpoint


def _draw(transforms: Compose) -> list:
    data = transforms({"image": torch.arange(64.0).reshape(1, 8, 8)})["image"]
    return [random.random(), float(np.random.rand()), float(torch.rand(())), data.flatten().tolist()]


def test_rng_state_round_trip_and_weights_only(tmp_path):
    transforms = Compose([RandSpatialCropd("image", (4, 4), random_size=False), RandFlipd("image", prob=0.5)])
    transforms.set_random_state(3)
    rng = RNGState(transforms)
    torch.save({"rng": rng.state_dict()}, tmp_path / "rng.pt")
    first = [_draw(transforms) for _ in range(3)]
    rng.load_state_dict(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    assert [_draw(transforms) for _ in range(3)] == first


def test_rng_state_rejects_other_transforms():
    state = RNGState(Compose([RandFlipd("image", prob=0.5)])).state_dict()
    with pytest.raises(ValueError, match="random transforms"):
        RNGState().load_state_dict(state)


def test_find_resume_checkpoint(tmp_path):
    assert find_resume_checkpoint(tmp_path / "missing") is None
    for n in (2, 10):
        (tmp_path / f"checkpoint_epoch={n}.pt").write_bytes(b"")
    (tmp_path / "model_final.pt").write_bytes(b"")
    assert find_resume_checkpoint(tmp_path, "auto").name == "checkpoint_epoch=10.pt"
    assert find_resume_checkpoint(tmp_path, True).name == "checkpoint_epoch=10.pt"
    assert find_resume_checkpoint(tmp_path, "false") is None
    assert find_resume_checkpoint(tmp_path, str(tmp_path / "model_final.pt")).name == "model_final.pt"
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        find_resume_checkpoint(tmp_path, str(tmp_path / "nope.pt"))
    with pytest.raises(FileNotFoundError, match="--resume true"):
        find_resume_checkpoint(tmp_path / "missing", "true")


def _training(tmp_path, max_epochs: int, resume="auto"):
    """A tiny ignite training with the bundles' resume handlers; returns the engine and the linear model."""
    torch.manual_seed(0)
    net = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    data = [torch.randn(4, 2) for _ in range(3)]

    def step(engine, x):
        opt.zero_grad()
        loss = (net(x) - torch.rand(4, 1)).pow(2).mean()  # draws random numbers, as masking does
        loss.backward()
        opt.step()
        return loss.item()

    engine = Engine(step)
    state = {"model": net, "optimizer": opt, "rng": RNGState()}
    ResumeHandler(str(tmp_path), state, resume=resume).attach(engine)
    AtomicCheckpointSaver(str(tmp_path), state, save_engine_as="trainer", save_interval=1, n_saved=1).attach(engine)
    losses: list[float] = []
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(e.state.output))
    engine.run(data, max_epochs=max_epochs)
    return engine, net, losses


def test_saver_and_resume_continue_exactly(tmp_path):
    _, full, full_losses = _training(tmp_path / "full", 4)
    _training(tmp_path / "split", 2)
    engine, resumed, losses = _training(tmp_path / "split", 4)
    assert engine.state.epoch == 4 and losses == full_losses[6:]
    assert torch.equal(resumed.weight, full.weight)
    assert sorted(p.name for p in (tmp_path / "split").iterdir()) == ["checkpoint_epoch=4.pt"]  # rotated, no temp
    ckpt = torch.load(tmp_path / "split" / "checkpoint_epoch=4.pt", weights_only=True)
    assert ckpt["trainer"]["iteration"] == 12 and set(ckpt) == {"model", "optimizer", "rng", "trainer"}
    _, _, fresh = _training(tmp_path / "split", 4, resume=False)
    assert fresh == full_losses


def test_corrupt_checkpoint_names_the_file(tmp_path):
    bad = tmp_path / "checkpoint_epoch=3.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match=r"cannot resume training from .*checkpoint_epoch=3\.pt.*--resume false"):
        _training(tmp_path, 4)
