"""One-shot segmentation served by MONAI Label: the support is a labelled image of the datastore, chosen per request.

No MONAI Label model takes a support image + mask as its prompt (theirs are click- or class-prompted), so
:class:`OneShotInferTask` extends MONAI Label's ``BundleInferTask`` (which runs the bundle's ``inference.json``
preprocessing, network and postprocessing, and restores the mask onto the input's grid) with the support:

- request params ``support``: an image id of the datastore with a saved **final** label, ``"latest"`` (the image
  whose final label was saved last; the default), or a list of ids (K-shot: every support image is resized to the
  first one's grid); ``support_class``: the label value (or, where the saved label has ``label_info``, the name) to
  segment, ``0`` for every non-zero value;
- the support is preprocessed like the query (the bundle's ``preprocessing_transforms``) and checked by
  :func:`maskseg_monai.data.episodes.load_support`; a missing support, a support without a final label, or a class
  with no pixel in it is an HTTP 4xx naming what is wrong, never a fall-back to the bundle's demo support;
- the result is a uint8 mask (0 background, 1 the support's class) whose label is named after the support's class
  (``label_names`` of the response: Slicer and OHIF name the segment with it), and the response's params say which
  supports and class were used.

Propagating a label to the rest is MONAI Label's own batch inference with the same params
(``POST /batch/infer/<model>?images=unlabeled``), which saves each result as the image's ``original`` label.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from fastapi import HTTPException
from monai.transforms import Compose, Resize
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.tasks.infer.bundle import BundleInferTask

from maskseg_monai.data.episodes import load_support
from maskseg_monai.inferers import OneShotInferer

__all__ = ["OneShotInferTask", "SupportError", "is_oneshot_bundle", "resolve_supports"]

logger = logging.getLogger(__name__)

SUPPORT_KEYS = ("support_image", "support_label")


class SupportError(HTTPException):
    """A request whose support cannot be used: answered with its HTTP status and message (``detail``)."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(status_code=status_code, detail=detail)

    def __str__(self) -> str:
        return f"{self.status_code}: {self.detail}"


def is_oneshot_bundle(path: str | os.PathLike) -> bool:
    """Whether a bundle's network takes a support (its metadata lists ``support_image``/``support_label`` inputs)."""
    meta = Path(path) / "configs" / "metadata.json"
    if not meta.is_file():
        return False
    inputs = json.loads(meta.read_text()).get("network_data_format", {}).get("inputs", {})
    return all(k in inputs for k in SUPPORT_KEYS)


def _final_label(datastore: Datastore, image_id: str) -> str:
    return datastore.get_label_by_image_id(image_id, DefaultLabelTag.FINAL)


def resolve_supports(datastore: Datastore, support: Any) -> list[str]:
    """The datastore image ids a request's ``support`` names, each checked to have a saved final label.

    Raises:
        SupportError: 400 for a malformed value, 404 for an unknown image id, 409 for an image without a final
            label or a datastore without any (``latest``).
    """
    if support in (None, "", []):
        support = "latest"
    if isinstance(support, str) and support.strip().startswith("["):
        try:
            support = json.loads(support)
        except json.JSONDecodeError as e:
            raise SupportError(400, f"params.support {support!r} is not a JSON list of image ids: {e}") from e
    if isinstance(support, str) and support == "latest":
        labelled = datastore.get_labeled_images(DefaultLabelTag.FINAL)
        if not labelled:
            raise SupportError(
                409,
                "params.support is 'latest' but no image in the datastore has a saved final label: save a label for "
                "one image first (PUT /datastore/label?image=ID&tag=final), then use it as the support.",
            )

        def saved_at(image_id: str) -> float:
            info = datastore.get_label_info(_final_label(datastore, image_id), DefaultLabelTag.FINAL) or {}
            return float(info.get("ts", 0))

        return [max(labelled, key=saved_at)]
    ids = [support] if isinstance(support, str) else support
    if not isinstance(ids, Sequence) or not ids or not all(isinstance(i, str) and i for i in ids):
        raise SupportError(400, f"params.support must be an image id, 'latest' or a list of ids, got {support!r}.")
    known = set(datastore.list_images())
    for image_id in ids:
        if image_id not in known:
            raise SupportError(404, f"params.support: no image '{image_id}' in the datastore.")
        if not _final_label(datastore, image_id):
            raise SupportError(
                409,
                f"params.support: image '{image_id}' has no saved final label; save one (PUT "
                f"/datastore/label?image={image_id}&tag=final) or choose a labelled image.",
            )
    return list(ids)


def _class_of(datastore: Datastore, image_id: str, support_class: Any) -> tuple[int, str]:
    """``(value, name)`` of the class to segment; names come from the saved label's ``label_info`` where present."""
    info = datastore.get_label_info(_final_label(datastore, image_id), DefaultLabelTag.FINAL) or {}
    entries = info.get("label_info") or []
    names = {int(e["idx"]): str(e["name"]) for e in entries if isinstance(e, dict) and "idx" in e and "name" in e}
    if support_class in (None, "", 0, "0"):
        return 0, names[next(iter(names))] if len(names) == 1 else "foreground"
    text = str(support_class).strip()
    if text.lstrip("-").isdigit():
        value = int(text)
        return value, names.get(value, f"class {value}")
    by_name = {v.lower(): k for k, v in names.items()}
    if text.lower() not in by_name:
        raise SupportError(
            422,
            f"params.support_class {support_class!r} is neither a label value nor a label name of image "
            f"'{image_id}' (its label_info names: {sorted(names.values()) or 'none saved'}).",
        )
    value = by_name[text.lower()]
    return value, names[value]


class OneShotInferTask(BundleInferTask):
    """MONAI Label infer task for a one-shot bundle; the support comes from the datastore (module docstring).

    Args:
        path: the bundle folder (``configs/inference.json``, ``models/model.pt``).
        conf: the app's conf.
        datastore: the app's datastore, where the support images and their final labels are.
        kwargs: passed to ``BundleInferTask``.
    """

    def __init__(self, path: str, conf: dict, datastore: Datastore, **kwargs: Any) -> None:
        config = {"support": "latest", "support_class": 0}
        super().__init__(path, conf, type="segmentation", config=config, **kwargs)
        self.datastore = datastore
        if self.valid:
            self.description = (
                f"{self.description} Support: params.support (an image id with a saved final label, 'latest', or a "
                "list) and params.support_class (value or name)."
            )

    def _support(self, data: dict) -> tuple[torch.Tensor, torch.Tensor, dict]:
        ids = resolve_supports(self.datastore, data.get("support"))
        value, name = _class_of(self.datastore, ids[0], data.get("support_class"))
        transform = Compose(self.bundle_config.get_parsed_content("preprocessing_transforms", instantiate=True))
        images, masks = [], []
        for image_id in ids:
            label = self.datastore.get_label_uri(_final_label(self.datastore, image_id), DefaultLabelTag.FINAL)
            try:
                image, mask = load_support(self.datastore.get_image_uri(image_id), label, transform, value)
            except (ValueError, FileNotFoundError) as e:
                raise SupportError(422, f"params.support '{image_id}': {e}") from e
            if images and image.shape[1:] != images[0].shape[1:]:
                size = images[0].shape[1:]
                image = Resize(size, mode="area")(image)
                mask = (Resize(size, mode="nearest")(mask) > 0).to(mask.dtype)
                if not bool(mask.any()):
                    raise SupportError(422, f"params.support '{image_id}': no pixel of the class left at {size}.")
            images.append(image)
            masks.append(mask)
        used = {"support": ids, "support_class": value, "label_name": name}
        return torch.stack(images), torch.stack(masks), used

    def inferer(self, data: dict | None = None) -> OneShotInferer:
        data = data if data is not None else {}
        support_image, support_label, used = self._support(data)
        data.setdefault("result", {}).update(used)
        logger.info(f"one-shot support: {used}")
        get = self.bundle_config.get
        return OneShotInferer(support_image, support_label, chunks=get("chunks", 3),
                              slice_batch_size=get("slice_batch_size", 32))  # fmt: skip

    def __call__(self, request, callbacks=None):
        result_file, result_json = super().__call__(request, callbacks)
        name = result_json.get("label_name")
        if name:
            result_json["label_names"] = {name: 1}
        return result_file, result_json
