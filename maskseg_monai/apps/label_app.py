"""The MONAI Label app serving our bundles (the ``main.py`` that :func:`maskseg_monai.apps.label.prepare_label_app`
writes imports :class:`MaskSegApp` from here). Needs the MONAI Label environment (``requirements-label.txt``).

It is MONAI Label's ``monaibundle`` sample app (bundle infer and train tasks, epistemic scoring, active learning)
with what that app lacks for our bundles:

- a **one-shot** infer task (:class:`~maskseg_monai.apps.label_oneshot.OneShotInferTask`): the support is a labelled
  image of the datastore, chosen per request;
- training that writes nothing into the **served** bundle but the new ``models/model.pt`` at the end of a finished
  round (:class:`ServedBundleTrainTask`), for the one-shot bundle through labelled episodes of the datastore's final
  labels (:class:`OneShotTrainTask`);
- a **clean stop**: stopping the server (SIGTERM / SIGINT) kills its training, scoring and batch-inference
  subprocesses at once (:func:`stop_background_tasks`) instead of leaving them to die of a broken pipe;
- only local bundles (``<app>/model/<name>``): a name without a folder is an error, never a download.

Request conf (``--conf key value`` of ``monailabel start_server``): ``models`` (comma-separated; default: every
bundle folder), ``epistemic_model`` (a segmentation bundle for epistemic scoring), ``epistemic_simulation_size``,
``epistemic_dropout``, ``epistemic_max_samples``, ``skip_trainers``.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import torch
from monai.transforms import Invertd, SaveImaged
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.epistemic import Epistemic
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random
from monailabel.tasks.infer.bundle import BundleInferTask
from monailabel.tasks.scoring.epistemic_v2 import EpistemicScoring
from monailabel.tasks.train.bundle import BundleTrainTask
from monailabel.utils.async_tasks import utils as async_utils
from monailabel.utils.others.generic import strtobool

from maskseg_monai.apps.label_oneshot import OneShotInferTask, is_oneshot_bundle
from maskseg_monai.utils import atomic_write

__all__ = ["MaskSegApp", "OneShotTrainTask", "ServedBundleTrainTask", "local_bundles", "stop_background_tasks"]

logger = logging.getLogger(__name__)


def local_bundles(app_dir: str | os.PathLike, names: str | None) -> dict[str, str]:
    """``{name: folder}`` of the bundles to serve: ``names`` (comma-separated) or every folder under ``model/``.

    Raises:
        ValueError: a named bundle has no folder under ``<app_dir>/model`` (MONAI Label would try to download it).
    """
    model_dir = Path(app_dir) / "model"
    wanted = [n.strip() for n in names.split(",") if n.strip()] if names else None
    if wanted is None:
        wanted = sorted(p.name for p in model_dir.iterdir() if (p / "configs").is_dir()) if model_dir.is_dir() else []
    missing = [n for n in wanted if not (model_dir / n / "configs").is_dir()]
    if missing:
        raise ValueError(
            f"--conf models names {missing}, which have no bundle folder under {model_dir}; this app serves local "
            "bundles only (python -m maskseg_monai.apps.label --model NAME=PATH copies them there)."
        )
    return {n: str(model_dir / n) for n in wanted}


def stop_background_tasks() -> list[int]:
    """Kill every running MONAI Label subprocess (training, scoring, batch inference) and its children.

    MONAI Label starts them with ``subprocess.Popen`` from a worker thread that reads their output; a server stopped
    without this leaves them running until their next write to the closed pipe (3 s measured for training, longer
    for a step that prints nothing). Returns the killed process ids.
    """
    import psutil

    killed = []
    for method, procs in list(async_utils.background_processes.items()):
        for task_id, proc in list(procs.items()):
            if proc.poll() is not None:
                continue
            try:
                children = psutil.Process(proc.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                children = []
            for child in children:
                try:
                    child.kill()
                    killed.append(child.pid)
                except psutil.NoSuchProcess:
                    pass
            proc.kill()
            killed.append(proc.pid)
            logger.info(f"server stopping: killed the {method} subprocess {proc.pid} (task {task_id})")
    return killed


def _chain_stop_handlers() -> None:
    """On SIGTERM / SIGINT, kill the background subprocesses, then run the handler that was there (uvicorn's)."""
    if threading.current_thread() is not threading.main_thread():
        logger.warning("not in the main thread: the server's subprocesses will not be stopped with it")
        return
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)

        def handler(signum, frame, previous=previous):
            stop_background_tasks()
            if callable(previous):
                previous(signum, frame)
            elif previous == signal.SIG_DFL:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)

        signal.signal(sig, handler)


class ServedBundleTrainTask(BundleTrainTask):
    """MONAI Label's bundle trainer, writing its checkpoints and logs outside the served bundle.

    The bundle's ``ckpt_dir`` (resume checkpoints, ``model.pt`` at the best validation) and ``output_dir``
    (TensorBoard) point into ``<work_dir>/<round>/``; when the round finishes, its ``model.pt`` replaces the served
    ``models/model.pt`` through :func:`~maskseg_monai.utils.atomic_write` (one rename). A round that fails or is
    stopped leaves the served bundle as it was.
    """

    def __init__(self, path: str, conf: dict, work_dir: str | os.PathLike, **kwargs: Any) -> None:
        super().__init__(path, conf, **kwargs)
        self.work_dir = Path(work_dir)
        self._round_dir: Path | None = None

    def _update_overrides(self, overrides: dict) -> dict:
        self._round_dir = self.work_dir / time.strftime("%Y%m%d_%H%M%S")
        self._round_dir.mkdir(parents=True, exist_ok=True)
        overrides["ckpt_dir"] = str(self._round_dir / "models")
        overrides["output_dir"] = str(self._round_dir / "runs")
        overrides["cache_dir"] = str(self._round_dir / "cache")
        overrides["dataset_dir"] = str(self._round_dir / "demo_data")  # were a demo set built, not in the bundle
        return overrides

    def __call__(self, request, datastore):
        result = super().__call__(request, datastore)
        if self._round_dir is None:
            raise RuntimeError(f"{self.bundle_path}: the training round did not start; nothing was published.")
        trained = self._round_dir / "models" / "model.pt"
        if not trained.is_file():
            raise RuntimeError(f"{trained}: the round wrote no model (no validation ran); the served model is kept.")
        served = Path(self.bundle_path) / "models" / "model.pt"
        atomic_write(served, lambda tmp: shutil.copyfile(trained, tmp))
        logger.info(f"published {trained} as {served}")
        return result


class OneShotTrainTask(ServedBundleTrainTask):
    """Fine-tuning a one-shot bundle on the datastore's final labels, through labelled episodes.

    MONAI Label hands a bundle trainer the labelled records as ``train#dataset#data``; the one-shot bundle's
    dataset draws episodes from a cache of items instead, so the records become ``train#items`` /
    ``validate#items`` with ``episodes = "labelled"``, and every label value present in the training labels is
    both a training and a validation class (the annotator's classes: validation is on other images of the same
    classes, not on held-out classes). The round starts from the served model, as for any bundle.
    """

    def _update_overrides(self, overrides: dict) -> dict:
        super()._update_overrides(overrides)
        train = overrides.pop(self.const.key_train_dataset_data())
        val = overrides.pop(self.const.key_validate_dataset_data(), None) or train
        classes = _label_values(train)
        if not classes:
            raise ValueError(f"{self.bundle_path}: the datastore's final labels hold no non-zero value to train on.")
        overrides.update({
            "episodes": "labelled",
            "train#items": [{"image": d["image"], "label": d["label"]} for d in train],
            "validate#items": [{"image": d["image"], "label": d["label"]} for d in val],
            "validate#has_body": False,  # no body masks in a datastore (the body baseline is left out)
            "train_classes": classes,
            "test_classes": classes,
        })  # fmt: skip
        logger.info(f"one-shot fine-tuning on {len(train)} labelled images, classes {classes}; {len(val)} to validate")
        return overrides


def _label_values(records: list[dict]) -> list[int]:
    """The sorted non-zero values of the records' label files."""
    from monai.transforms import LoadImage

    loader = LoadImage(image_only=True)
    values: set[int] = set()
    for d in records:
        values |= {int(v) for v in torch.unique(torch.as_tensor(loader(d["label"]))).tolist() if v != 0}
    return sorted(values)


class MaskSegApp(MONAILabelApp):
    """MONAI Label app for maskseg-monai's bundles (see the module docstring)."""

    def __init__(self, app_dir: str, studies: str, conf: dict) -> None:
        self.model_dir = os.path.join(app_dir, "model")
        self.models = local_bundles(app_dir, conf.get("models"))
        epistemic = conf.get("epistemic_model")
        self.epistemic_models = local_bundles(app_dir, epistemic) if epistemic else {}
        self.epistemic_max_samples = int(conf.get("epistemic_max_samples", "0"))
        self.epistemic_simulation_size = int(conf.get("epistemic_simulation_size", "5"))
        self.epistemic_dropout = float(conf.get("epistemic_dropout", "0.2"))
        self.work_dir = os.path.join(app_dir, "train_runs")
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name="maskseg-monai",
                         description="maskseg-monai bundles: UNETR segmentation, one-shot segmentation from a "
                         "labelled image of the datastore", version=_version())  # fmt: skip

    def init_infers(self) -> dict[str, InferTask]:
        infers: dict[str, InferTask] = {}
        for name, path in self.models.items():
            if is_oneshot_bundle(path):
                task = OneShotInferTask(path, self.conf, datastore=self.datastore())
            else:
                task = BundleInferTask(path, self.conf)
            if not task.is_valid():
                logger.warning(f"{name}: not served (no models/model.pt under {path})")
                continue
            logger.info(f"+++ Adding Inferer:: {name} => {task}")
            infers[name] = task
        return infers

    def init_trainers(self) -> dict[str, TrainTask]:
        trainers: dict[str, TrainTask] = {}
        if strtobool(self.conf.get("skip_trainers", "false")):
            return trainers
        for name, path in self.models.items():
            kind = OneShotTrainTask if is_oneshot_bundle(path) else ServedBundleTrainTask
            task = kind(path, self.conf, work_dir=os.path.join(self.work_dir, name))
            if task.is_valid():
                logger.info(f"+++ Adding Trainer:: {name} => {task}")
                trainers[name] = task
        return trainers

    def init_strategies(self) -> dict[str, Strategy]:
        strategies: dict[str, Strategy] = {"random": Random(), "first": First()}
        if self.epistemic_models:
            strategies["epistemic"] = Epistemic()
        logger.info(f"Active Learning Strategies:: {list(strategies)}")
        return strategies

    def init_scoring_methods(self) -> dict[str, ScoringMethod]:
        methods: dict[str, ScoringMethod] = {}
        for name, path in self.epistemic_models.items():
            if is_oneshot_bundle(path):
                raise ValueError(f"--conf epistemic_model {name}: a one-shot bundle cannot be scored without support.")
            task = BundleInferTask(path, self.conf, train_mode=True, skip_writer=True, dropout=self.epistemic_dropout,
                                   post_filter=[SaveImaged, Invertd])  # fmt: skip
            methods[name] = EpistemicScoring(
                task, max_samples=self.epistemic_max_samples, simulation_size=self.epistemic_simulation_size
            )
            logger.info(f"+++ Adding Scoring Method:: {name} => {path}")
        return methods

    def on_init_complete(self) -> None:
        super().on_init_complete()
        _chain_stop_handlers()


def _version() -> str:
    from maskseg_monai import __version__

    return __version__
