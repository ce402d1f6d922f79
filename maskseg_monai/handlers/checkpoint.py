"""Resuming interrupted training: atomic resume checkpoints, their random-number state, and the loader.

The bundles' ``train#handlers`` start with a :class:`ResumeHandler`; their ``train#rank0_handlers`` end with an
:class:`AtomicCheckpointSaver` whose ``save_dict`` holds the network, optimizer, LR scheduler, AMR scheduler
(where present), an :class:`RNGState` and (``save_engine_as="trainer"``) the trainer's ignite state (epoch,
iteration, ``max_epochs``). At the end of every epoch it writes ``models/checkpoint_epoch=N.pt``, keeping the
last one; the next run resumes from it (``--resume auto``, the default), so a killed run loses at most the
epoch it was in.

MONAI's ``CheckpointSaver`` writes through ignite's ``DiskSaver`` with ``atomic=False`` (ignite's default is
``atomic=True``, but MONAI turns it off for file permissions), so a kill during ``torch.save`` can leave a
truncated checkpoint; :class:`AtomicCheckpointSaver` writes every file through
:func:`maskseg_monai.utils.atomic_torch_save` (temporary file beside the target, then ``os.replace``).
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ignite.distributed as idist
import numpy as np
import torch
from ignite.handlers.checkpoint import BaseSaveHandler
from monai.handlers import CheckpointLoader, CheckpointSaver
from monai.transforms import Randomizable, Transform

from maskseg_monai.utils import BadInputError, as_bool, atomic_torch_save

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["AtomicCheckpointSaver", "CheckedCheckpointLoader", "RNGState", "ResumeHandler", "find_resume_checkpoint"]

RESUME_PATTERN = re.compile(r"^checkpoint_epoch=(\d+)\.pt$")


def _random_states(root: Any) -> list[np.random.RandomState]:
    """The distinct ``RandomState`` objects of the MONAI ``Randomizable`` transforms inside ``root``, in a fixed order.

    Walks lists, tuples and the attributes of MONAI transforms (``Compose.transforms``, ``RandSpatialCropd.cropper``).
    """
    found: list[np.random.RandomState] = []
    seen: set[int] = set()

    def visit(obj: Any) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, Randomizable) and isinstance(obj.R, np.random.RandomState) and id(obj.R) not in seen:
            seen.add(id(obj.R))
            found.append(obj.R)
        if isinstance(obj, (list, tuple)):
            children: Any = obj
        elif isinstance(obj, (Transform, Randomizable)):
            children = vars(obj).values()
        else:
            return
        for child in children:
            visit(child)

    visit(root)
    return found


def _numpy_state(state: tuple) -> dict[str, Any]:
    """``RandomState.get_state()`` as tensors and Python numbers (loadable with ``weights_only=True``)."""
    _, keys, pos, has_gauss, gauss = state
    return {"keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "gauss": float(gauss)}  # fmt: skip


def _numpy_tuple(state: Mapping[str, Any]) -> tuple:
    """Inverse of :func:`_numpy_state`."""
    keys = np.asarray(state["keys"].cpu().numpy(), dtype=np.uint32)
    return "MT19937", keys, int(state["pos"]), int(state["has_gauss"]), float(state["gauss"])


class RNGState:
    """Checkpointable random-number state: Python ``random``, NumPy, torch CPU (and CUDA) and the transforms'.

    :meth:`state_dict` holds only tensors and Python numbers, so a checkpoint containing it loads with
    ``torch.load(..., weights_only=True)``. With ``transforms`` (the training ``Compose``) the ``RandomState`` of
    every MONAI random transform is saved too: MONAI's ``DataLoader`` re-seeds them when it is built, so
    without them a resumed run would repeat the first epoch's augmentations.

    Args:
        transforms: a transform (or list) whose random transforms' states are included; ``None`` for global only.

    Example::

        rng = RNGState()
        state = rng.state_dict()
        torch.rand(3)  # consumes random numbers
        rng.load_state_dict(state)  # the next torch.rand(3) repeats
    """

    def __init__(self, transforms: Any = None) -> None:
        self.transforms = transforms

    def state_dict(self) -> dict[str, Any]:
        """The current states (see the class docstring)."""
        version, internal, gauss_next = random.getstate()
        state: dict[str, Any] = {
            "python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64),
                       "gauss_next": gauss_next},
            "numpy": _numpy_state(np.random.get_state(legacy=True)),
            "torch": torch.get_rng_state(),
            "transforms": [_numpy_state(r.get_state(legacy=True)) for r in _random_states(self.transforms)],
        }  # fmt: skip
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`.

        Raises:
            ValueError: when the number of random transforms differs from the saved one.
        """
        py = state["python"]
        random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss_next"]))
        np.random.set_state(_numpy_tuple(state["numpy"]))
        torch.set_rng_state(state["torch"].cpu())
        if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
        generators = _random_states(self.transforms)
        if len(generators) != len(state["transforms"]):
            raise ValueError(
                f"the checkpoint holds the random state of {len(state['transforms'])} random transforms, "
                f"the training transforms have {len(generators)}."
            )
        for gen, saved in zip(generators, state["transforms"]):
            gen.set_state(_numpy_tuple(saved))


def find_resume_checkpoint(ckpt_dir: str | os.PathLike, resume: Any = "auto") -> Path | None:
    """The checkpoint a training run should resume from, or ``None`` to start afresh.

    Args:
        ckpt_dir: the bundle's ``ckpt_dir``, searched for ``checkpoint_epoch=N.pt`` (the highest ``N`` wins).
        resume: ``"auto"`` (resume when a checkpoint exists), ``true`` (a checkpoint must exist), ``false``
            (start afresh) or the path of a checkpoint file.

    Raises:
        FileNotFoundError: ``resume`` is true and there is no checkpoint, or it names a file that does not exist.
    """
    if isinstance(resume, (str, os.PathLike)) and str(resume).strip().lower() == "auto":
        required = False
    elif isinstance(resume, bool) or str(resume).strip().lower() in {
        "true",
        "false",
        "yes",
        "no",
        "on",
        "off",
        "1",
        "0",
    }:
        required = as_bool(resume, "resume")
        if not required:
            return None
    else:
        path = Path(resume)
        if not path.is_file():
            raise FileNotFoundError(f"--resume {resume}: no such checkpoint file.")
        return path
    found = []
    if os.path.isdir(ckpt_dir):
        found = [(int(m.group(1)), Path(ckpt_dir) / n) for n in os.listdir(ckpt_dir) if (m := RESUME_PATTERN.match(n))]
    if not found:
        if required:
            raise FileNotFoundError(f"--resume true: no checkpoint_epoch=N.pt in {ckpt_dir}.")
        return None
    return max(found)[1]


class ResumeHandler:
    """Resume training from a checkpoint of :class:`AtomicCheckpointSaver` (put it first in ``train#handlers``).

    On :meth:`attach` it finds the checkpoint (:func:`find_resume_checkpoint`), loads it with
    ``torch.load(..., weights_only=True)`` and restores every object of ``load_dict``, so a corrupt or
    mismatched file fails before training starts, with a message naming the file. The trainer's own state
    (epoch, iteration) is restored on ``Events.STARTED``, as MONAI's ``CheckpointLoader`` does, keeping the
    ``max_epochs`` of the current run: ignite then continues with the next epoch. The random-number state
    (:class:`RNGState`) is restored last, just before the trainer starts.

    Args:
        ckpt_dir: folder of the resume checkpoints.
        load_dict: ``name -> object with load_state_dict``, the same names as the saver's ``save_dict``.
        resume: see :func:`find_resume_checkpoint`.
        engine_key: the checkpoint key of the trainer's state (``AtomicCheckpointSaver(save_engine_as=...)``).
        map_location: ``torch.load``'s ``map_location`` (the bundle's ``device``).

    Raises:
        RuntimeError: naming the file, when the checkpoint cannot be read or does not fit the objects.
    """

    def __init__(
        self,
        ckpt_dir: str,
        load_dict: Mapping[str, Any],
        resume: Any = "auto",
        engine_key: str = "trainer",
        map_location: Any = None,
    ) -> None:
        self.ckpt_dir, self.load_dict, self.resume = ckpt_dir, dict(load_dict), resume
        self.engine_key, self.map_location = engine_key, map_location
        self.path: Path | None = None
        self._engine_state: dict[str, Any] | None = None
        self._rng_state: tuple[RNGState, Mapping[str, Any]] | None = None

    def attach(self, engine: Engine) -> None:
        """Load the checkpoint into ``load_dict`` now and into ``engine`` when it starts."""
        from ignite.engine import Events

        self.path = find_resume_checkpoint(self.ckpt_dir, self.resume)
        if self.path is None:
            return
        advice = "Delete the file, or pass --resume false to start afresh (or --resume PATH for another file)."
        try:
            ckpt = torch.load(self.path, map_location=self.map_location, weights_only=True)
        except Exception as err:  # torch's own message is long and suggests weights_only=False: keep its first line
            first = (str(err).strip().splitlines() or [""])[0][:200]
            raise RuntimeError(
                f"cannot resume training from {self.path}: the file is truncated, corrupt or not a weights-only "
                f"torch checkpoint ({type(err).__name__}: {first}). {advice}"
            ) from None
        try:
            if not isinstance(ckpt, Mapping) or self.engine_key not in ckpt:
                raise ValueError(f"it holds no '{self.engine_key}' state, it is not a resume checkpoint")
            missing = sorted(set(self.load_dict) - set(ckpt))
            if missing:
                raise ValueError(f"it lacks {missing}")
            state = dict(ckpt[self.engine_key])
            saved_len, run_len = int(state["epoch_length"]), engine.state.epoch_length
            if run_len is not None and saved_len != run_len:
                raise ValueError(
                    f"it was saved with {saved_len} iterations per epoch, this run has {run_len} "
                    "(batch size or data changed)"
                )
            epoch = int(state.get("epoch", int(state.get("iteration", 0)) // max(saved_len, 1)))
            if engine.state.max_epochs is not None and epoch > engine.state.max_epochs:
                raise ValueError(f"it is at epoch {epoch}, beyond this run's {engine.state.max_epochs} epochs")
            for key, obj in self.load_dict.items():
                if key == self.engine_key:
                    continue
                if isinstance(obj, RNGState):
                    obj.load_state_dict(ckpt[key])  # checked now, restored again on STARTED
                    self._rng_state = (obj, ckpt[key])
                else:
                    getattr(obj, "module", obj).load_state_dict(ckpt[key])
        except Exception as err:
            message = f"cannot resume training from {self.path}: {type(err).__name__}: {err}. {advice}"
            raise RuntimeError(message) from None
        self._engine_state = state
        engine.logger.info(f"resuming from {self.path} at epoch {epoch}")
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        """Restore the trainer's epoch and iteration (keeping this run's ``max_epochs``) and the random state."""
        if self._engine_state is None:
            return
        max_epochs = engine.state.max_epochs
        engine.load_state_dict(self._engine_state)
        engine.state.max_epochs = max_epochs
        if self._rng_state is not None:
            obj, state = self._rng_state
            obj.load_state_dict(state)
        engine.logger.info(f"resumed from {self.path}: continuing at epoch {engine.state.epoch + 1} of {max_epochs}")


class _AtomicDiskSaver(BaseSaveHandler):
    """ignite save handler writing ``dirname/filename`` through :func:`atomic_torch_save` on rank 0.

    ignite removes the file a new checkpoint replaces *before* writing it; here the removal waits until the
    new file is written, so a kill in between never leaves the folder without a checkpoint.
    """

    def __init__(self, dirname: str, filename: str | None = None) -> None:
        self.dirname, self.filename = dirname, filename
        self._pending: list[str] = []

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        if idist.get_rank() != 0:
            return
        name = self.filename or filename
        atomic_torch_save(checkpoint, os.path.join(self.dirname, name))
        for old in self._pending:
            path = os.path.join(self.dirname, old)
            if old != name and os.path.exists(path):
                os.remove(path)
        self._pending.clear()

    def remove(self, filename: str) -> None:
        if idist.get_rank() == 0:
            self._pending.append(self.filename or filename)


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` writing every file atomically, optionally with the engine's state.

    Same arguments and file names as ``monai.handlers.CheckpointSaver``, plus:

    Args:
        save_engine_as: when set, the engine it is attached to is saved under this key (``"trainer"``), which
            a config cannot name in ``save_dict`` without a cycle (the trainer owns its handlers).

    On ``Events.STARTED`` the interval checkpoints already in ``save_dir`` (``checkpoint_epoch=N.pt``, from the
    run being resumed or an earlier one) join the list ``n_saved`` rotates, so they are removed as new ones
    are written rather than left behind. :meth:`state_dict` is the key-metric tracking list (the best score so
    far) for the trainer's checkpoint; MONAI's ``load_state_dict`` restores it.
    """

    def __init__(self, save_dir: str, save_dict: dict, *args: Any, save_engine_as: str | None = None, **kwargs: Any):
        super().__init__(save_dir, dict(save_dict), *args, **kwargs)  # a copy: attach() adds the engine to it
        self.save_engine_as = save_engine_as
        for ckpt in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if ckpt is not None:
                ckpt.save_handler = _AtomicDiskSaver(self.save_dir, getattr(ckpt.save_handler, "filename", None))

    def attach(self, engine: Engine) -> None:
        """Attach as MONAI does, after adding ``engine`` to ``save_dict`` and the adoption of old checkpoints."""
        from ignite.engine import Events

        if self.save_engine_as:
            self.save_dict[self.save_engine_as] = engine
        if self._interval_checkpoint is not None and self.epoch_level:
            engine.add_event_handler(Events.STARTED, self._adopt_interval_checkpoints)
        super().attach(engine)

    def _adopt_interval_checkpoints(self, engine: Engine) -> None:
        """Track the ``checkpoint_epoch=N.pt`` files in ``save_dir`` so that ``n_saved`` rotates them away."""
        ckpt = self._interval_checkpoint
        if ckpt is None or ckpt._saved or not os.path.isdir(self.save_dir):
            return
        prefix = f"{ckpt.filename_prefix}_" if ckpt.filename_prefix else ""
        pattern = re.compile(rf"^{re.escape(prefix)}checkpoint_epoch=(\d+)\.pt$")
        items = []
        for name in os.listdir(self.save_dir):
            m = pattern.match(name)
            if m:
                epoch = int(m.group(1))  # files of a later epoch than this run's are stale: rotate them first
                items.append((epoch if epoch <= engine.state.epoch else -1, name))
        ckpt.load_state_dict({"_saved": sorted(items)})

    def state_dict(self) -> dict[str, Any]:
        """The key-metric checkpoint's tracking list (empty without ``save_key_metric``)."""
        return dict(self._key_metric_checkpoint.state_dict()) if self._key_metric_checkpoint is not None else {}


class CheckedCheckpointLoader(CheckpointLoader):
    """MONAI's :class:`~monai.handlers.CheckpointLoader` (``weights_only`` loading) whose errors name the file.

    MONAI lets torch's error through: a truncated ``model.pt`` ends a run with ``PytorchStreamReader failed reading
    zip archive``, and a checkpoint of another network size with a long key list, neither naming the file. Here both
    become a :class:`~maskseg_monai.utils.BadInputError` ``"<file>: <problem>"`` with what to do.
    """

    def __call__(self, engine: Engine) -> None:
        path = self.load_path
        if not os.path.isfile(path):
            raise BadInputError(f"{path}: checkpoint not found; train the bundle first or pass --ckpt_path PATH.")
        try:
            super().__call__(engine)
        except Exception as err:
            first = (str(err).strip().splitlines() or [""])[0][:200]
            raise BadInputError(
                f"{path}: cannot load the checkpoint ({type(err).__name__}: {first}); the file is truncated, corrupt, "
                "not a weights-only torch checkpoint, or from a network of other sizes than this config's."
            ) from None
