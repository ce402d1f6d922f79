"""Superpixel pseudo-labels for annotation-free one-shot episodes."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import look_up_option

__all__ = ["SUPPORTED_SUPERPIXELS", "SuperpixelLabeld"]

SUPPORTED_SUPERPIXELS = ("felzenszwalb", "slic", "kmeans")


class SuperpixelLabeld(MapTransform):
    """Superpixel pseudo-labels of an image, for annotation-free one-shot episodes (Ouyang et al., ECCV 2020).

    Writes ``label_key``: an int32 ``[1, *spatial]`` map with ids 1..N (one per superpixel), computed from the
    channel mean of ``key``'s ``[C, *spatial]`` image with scikit-image. ``"felzenszwalb"`` (the paper's choice)
    works on 2D images and on each slice of a 3D volume (ids stay unique across slices); ``"slic"`` segments 2D or
    3D directly. ``"kmeans"`` (ours) gives *appearance classes* instead of connected regions: k-means
    (:func:`~maskseg_monai.masking.batched_kmeans`) of every pixel's intensity and its Gaussian-smoothed
    intensities (sigma 1, 2, 4 px), standardised, into ``n_segments`` clusters; a cluster may be many disconnected
    regions, like a tissue (grey matter) or a cell type (nuclei) is. Superpixels suit organ-like targets (one
    region each); the clusters suit tissue-like ones (measured in ``bundles/oneshot/docs/real_images.md``).

    Args:
        keys: the image key (one).
        label_key: where to write the pseudo-label. Defaults to ``"label"``.
        method: ``"felzenszwalb"`` or ``"slic"``. Defaults to ``"felzenszwalb"``.
        scale: Felzenszwalb scale (larger: bigger regions). Defaults to 100.
        sigma: Gaussian smoothing before segmenting. Defaults to 0.8.
        min_size: Felzenszwalb minimum region size in pixels. Defaults to 20.
        n_segments: SLIC number of segments, or the k-means clusters. Defaults to 100.
        compactness: SLIC compactness. Defaults to 0.1 (intensity images in [0, 1]).
        slice_axis: the spatial axis of 3D slices for Felzenszwalb. Defaults to -1.
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str = "label",
        method: str = "felzenszwalb",
        scale: float = 100.0,
        sigma: float = 0.8,
        min_size: int = 20,
        n_segments: int = 100,
        compactness: float = 0.1,
        slice_axis: int = -1,
    ) -> None:
        super().__init__(keys)
        self.label_key = label_key
        self.method = look_up_option(method, SUPPORTED_SUPERPIXELS)
        self.scale, self.sigma, self.min_size = float(scale), float(sigma), int(min_size)
        self.n_segments, self.compactness = int(n_segments), float(compactness)
        self.slice_axis = slice_axis

    def superpixels(self, image: np.ndarray) -> np.ndarray:
        """Ids 1..N of the superpixels of a ``[*spatial]`` float image."""
        from skimage.segmentation import felzenszwalb, slic

        if self.method == "kmeans":
            return self._clusters(image)
        if self.method == "slic":
            return slic(
                image, self.n_segments, self.compactness, sigma=self.sigma, channel_axis=None, start_label=1
            ).astype(np.int32)
        if image.ndim == 2:
            return felzenszwalb(image, self.scale, self.sigma, self.min_size).astype(np.int32) + 1
        stack = np.moveaxis(image, self.slice_axis, 0)
        out = np.zeros(stack.shape, np.int32)
        offset = 0
        for z, plane in enumerate(stack):  # Felzenszwalb is 2D only: one call per slice
            seg = felzenszwalb(plane, self.scale, self.sigma, self.min_size).astype(np.int32)
            out[z] = seg + offset + 1
            offset += int(seg.max()) + 1
        return np.moveaxis(out, 0, self.slice_axis)

    def _clusters(self, image: np.ndarray) -> np.ndarray:
        from scipy import ndimage as ndi

        from maskseg_monai.masking.clustering import batched_kmeans

        x = image.astype(np.float32)
        feats = np.stack([x] + [ndi.gaussian_filter(x, s) for s in (1.0, 2.0, 4.0)], -1).reshape(-1, 4)
        feats = (feats - feats.mean(0)) / np.maximum(feats.std(0), 1e-6)
        k = min(self.n_segments, feats.shape[0])
        assign, _ = batched_kmeans(torch.from_numpy(feats)[None], k, num_iters=10)
        return assign[0].numpy().reshape(x.shape).astype(np.int32) + 1

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            mean = torch.as_tensor(img, dtype=torch.float32).mean(0).cpu().numpy()
            d[self.label_key] = torch.from_numpy(self.superpixels(mean)[None])
        return d
