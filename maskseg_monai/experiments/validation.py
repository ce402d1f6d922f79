"""The validation split of a bundle, preprocessed once and shared by every cell of an experiment."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.data import MetaTensor
from monai.transforms import Compose

__all__ = ["ValidationSet", "load_items", "load_validation", "labelled_set", "validation_set", "iter_batches"]


@dataclass
class ValidationSet:
    """The preprocessed validation split shared by the cells (:func:`validation_set`).

    Attributes:
        images: ``[C, *spatial]`` each.
        labels: ``[1, *spatial]`` integer label maps, or ``None`` when some item has no ``"label"``.
        class_names: class index -> column-safe name of every class found in ``labels`` (empty without labels).
        datalist_file: the datalist they came from.
    """

    images: list[torch.Tensor]
    labels: list[torch.Tensor] | None
    class_names: dict[int, str] = field(default_factory=dict)
    datalist_file: str = ""


def _plain(x: Any) -> torch.Tensor:
    """A plain tensor (no MONAI metadata) of ``x``."""
    return x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)


def _is_intensity_transform(transform: Callable) -> bool:
    return type(transform).__module__.startswith("monai.transforms.intensity")


def _class_names(datalist_file: str | Path, found: Sequence[int]) -> dict[int, str]:
    """Class index -> column-safe name, from the datalist's ``"labels"`` (decathlon style) else ``class_<k>``."""
    try:
        labels = json.loads(Path(datalist_file).read_text()).get("labels", {})
        names = {int(k): str(v) for k, v in labels.items()}
    except (OSError, ValueError, AttributeError):
        names = {}
    names = {**{int(k): f"class_{int(k)}" for k in found}, **names}
    return {k: re.sub(r"[^0-9a-z]+", "_", v.lower()).strip("_") or f"class_{k}" for k, v in sorted(names.items())}


def load_items(
    parser: ConfigParser, items: Sequence[Mapping[str, Any]]
) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """Datalist items preprocessed as the bundle's ``validate#preprocessing`` does (deterministic, no augmentation).

    Images go through ``validate#preprocessing`` itself. Labels go through the same pipeline without its
    intensity transforms (``monai.transforms.intensity``), so that they receive the same loading, padding and
    cropping.

    Args:
        parser: the bundle's parsed config.
        items: datalist items ``{"image": path, "label": path, ...}``, e.g. ``validate#datalist``.

    Returns:
        images ``[C, *spatial]`` and labels ``[1, *spatial]`` (``None`` when some item has no ``"label"``).

    Raises:
        ValueError: when a label stops being integer-valued (an interpolating transform in the pipeline) or
            no longer matches its image's shape.
    """
    preprocessing = parser.get_parsed_content("validate#preprocessing")
    transforms = preprocessing.transforms if isinstance(preprocessing, Compose) else [preprocessing]
    label_pipeline = Compose([t for t in transforms if not _is_intensity_transform(t)])
    images = [_plain(preprocessing({"image": item["image"]})["image"]).float() for item in items]
    if not items or any("label" not in item for item in items):
        return images, None
    labels = []
    for item, image in zip(items, images):
        label = _plain(label_pipeline({"image": item["label"]})["image"]).float()
        if label.shape[1:] != image.shape[1:] or label.shape[0] != 1:
            raise ValueError(
                f"{item['label']}: preprocessed label {tuple(label.shape)} does not match its image "
                f"{tuple(image.shape)}."
            )
        if not torch.equal(label, label.round()):
            raise ValueError(
                f"{item['label']}: the label is no longer integer-valued after validate#preprocessing; "
                "the evaluation needs label-safe spatial transforms (pad, crop, flip, nearest resampling)."
            )
        labels.append(label)
    return images, labels


def load_validation(workflow: ConfigWorkflow) -> tuple[list[torch.Tensor], list[torch.Tensor] | None, str]:
    """The validation split (``validate#datalist``) preprocessed by :func:`load_items`.

    Args:
        workflow: a parsed :class:`ConfigWorkflow` of the bundle.

    Returns:
        images ``[C, *spatial]``, labels ``[1, *spatial]`` (``None`` when some validation item has no ``"label"``)
        and the datalist path.

    Raises:
        ValueError: as :func:`load_items`.
    """
    parser = workflow.parser
    images, labels = load_items(parser, parser.get_parsed_content("validate#datalist"))
    return images, labels, parser.get_parsed_content("datalist")


def labelled_set(
    images: list[torch.Tensor], labels: list[torch.Tensor] | None, datalist_file: str | Path
) -> ValidationSet:
    """A :class:`ValidationSet` of preprocessed images and labels, with the names of the classes found in the labels."""
    if labels is None:
        return ValidationSet(images, None, {}, str(datalist_file))
    found = sorted({int(v) for y in labels for v in torch.unique(y).tolist()})
    return ValidationSet(images, labels, _class_names(datalist_file, found), str(datalist_file))


def validation_set(workflow: ConfigWorkflow) -> ValidationSet:
    """:func:`load_validation` plus the names of the classes found in the labels (:func:`labelled_set`)."""
    return labelled_set(*load_validation(workflow))


def iter_batches(
    images: Sequence[torch.Tensor],
    labels: Sequence[torch.Tensor] | None,
    batch_size: int,
    device: torch.device | str = "cpu",
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Stack images ``[C, *spatial]`` (and labels ``[1, *spatial]``) into float batches on ``device``, in order.

    Yields:
        ``x [B, C, *spatial]`` and ``y [B, 1, *spatial]`` (``None`` without labels).

    Raises:
        ValueError: when ``images`` is empty or ``labels`` does not pair with it.
    """
    if len(images) == 0:
        raise ValueError("the validation split is empty.")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"got {len(labels)} labels for {len(images)} images.")
    for start in range(0, len(images), batch_size):
        stop = start + batch_size
        x = torch.stack([torch.as_tensor(i) for i in images[start:stop]]).float().to(device)
        y = None if labels is None else torch.stack([torch.as_tensor(i) for i in labels[start:stop]]).float().to(device)
        yield x, y
