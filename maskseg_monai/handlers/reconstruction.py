"""Reconstruction handlers: PSNR/SSIM as an ignite metric, and the inference panel saver."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from monai.handlers import IgniteMetricHandler, from_engine

from maskseg_monai.metrics.baselines import BaselineReconstructionMetric, visible_mean_fill
from maskseg_monai.metrics.reconstruction import ReconstructionMetric, reconstruct_image, region_psnr
from maskseg_monai.utils import as_bool, atomic_write, output_stem

__all__ = ["ReconstructionMetricHandler", "ReconstructionSaver", "save_reconstruction"]

if TYPE_CHECKING:
    from ignite.engine import Engine
    from PIL.Image import Image as PILImage


class ReconstructionMetricHandler(IgniteMetricHandler):
    """Ignite handler of :class:`~maskseg_monai.metrics.ReconstructionMetric` (PSNR/SSIM, masked or all pixels).

    Args:
        name: one of ``"psnr_masked"``, ``"psnr_all"``, ``"ssim_masked"``, ``"ssim_all"``.
        patch_size: the network's patch size.
        norm_pix_loss: whether the network predicts per-patch normalised pixels.
        data_range: image intensity range. Defaults to 1.
        output_transform: engine output -> ``(y_pred, y)``. Defaults to ``from_engine(["pred", "label"])``;
            the bundles' ``prepare_batch`` makes the image its own label.
        save_details: keep per-image values in ``engine.state.metric_details``.
        fill: score a baseline fill on the network's masks instead of the network
            (:class:`~maskseg_monai.metrics.BaselineReconstructionMetric`: ``"global_mean"``, ``"visible_mean"``,
            ``"gaussian"``);
            ``None`` scores the network.
        sigma: Gaussian sigma of the ``"gaussian"`` fill, chosen on training images.
        global_mean: per-channel training mean of the ``"global_mean"`` fill
            (:func:`~maskseg_monai.metrics.fit_baselines` gives both).
    """

    def __init__(
        self,
        name: str,
        patch_size: Sequence[int] | int,
        norm_pix_loss: bool = False,
        data_range: float = 1.0,
        output_transform: Callable = from_engine(["pred", "label"]),
        save_details: bool = True,
        fill: str | None = None,
        sigma: float | None = None,
        global_mean: float | Sequence[float] | None = None,
    ) -> None:
        if fill is None:
            metric_fn = ReconstructionMetric(name, patch_size, norm_pix_loss, data_range)
        else:
            metric_fn = BaselineReconstructionMetric(name, fill, sigma, global_mean, data_range)
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=save_details)


class ReconstructionSaver:
    """Write ``input | masked | reconstruction | reconstruction + visible`` panels for each image.

    2D images give one PNG; 3D volumes give a PNG of the central slice along the last axis and the
    reconstruction as NIfTI with the input's affine. Files are named after the input file
    (``<name>_mae.png``, ``<name>_recon.nii.gz``) and written atomically. With ``mps_channel`` a fifth
    panel shows the patches that AMLP's Masked Patch Selection put in the lesion category (bright) over
    the image.

    Args:
        output_dir: folder of the outputs (created if needed).
        patch_size: the network's patch size.
        norm_pix_loss: whether the network predicts per-patch normalised pixels.
        mps_channel: index of the MPS category map in the network output; for AMLP
            ``maskseg_monai.masking.extra_channel(in_channels, "category")`` (``in_channels + 2``).
    """

    def __init__(
        self,
        output_dir: str,
        patch_size: Sequence[int] | int,
        norm_pix_loss: bool = False,
        mps_channel: int | None = None,
    ) -> None:
        self.output_dir = output_dir
        self.patch_size = patch_size
        self.norm_pix_loss = as_bool(norm_pix_loss, "norm_pix_loss")
        self.mps_channel = mps_channel
        self.written: list[str] = []

    def attach(self, engine: Engine) -> None:
        """Save after every iteration of ``engine``."""
        from ignite.engine import Events

        if not engine.has_event_handler(self, Events.ITERATION_COMPLETED):
            engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        """Save the current batch (decollated or not)."""
        images, outputs = from_engine(["image", "pred"])(engine.state.output)
        for image, output in zip(images, outputs):
            recon, pasted, pixel_mask = reconstruct_image(
                output[None], image[None], self.patch_size, self.norm_pix_loss
            )
            meta = getattr(image, "meta", {})
            name = meta.get("filename_or_obj", f"image_{len(self.written)}")
            extra, titles = [], []
            if self.mps_channel is not None:
                category = output[self.mps_channel : self.mps_channel + 1].float()
                extra.append(0.5 * image.float().mean(0, keepdim=True) + 0.5 * category)
                titles.append("MPS lesion patches")
            self.written += save_reconstruction(
                self.output_dir, str(name), image, pixel_mask[0], recon[0], pasted[0], meta.get("affine"), extra, titles
            )


def _to_uint8(img: torch.Tensor) -> np.ndarray:
    """``[C, H, W]`` in [0, 1] -> ``[H, W, 3]`` uint8 (first channel as gray unless RGB)."""
    img = img.detach().float().clamp(0, 1).cpu()
    arr = ((img if img.shape[0] == 3 else img[:1]).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    return np.repeat(arr, 3, axis=-1) if arr.shape[-1] == 1 else arr


#: smallest height (pixels) a panel is enlarged to, by an integer nearest-neighbour factor
PANEL_MIN_HEIGHT = 192


def _panel_strip(panels: Sequence[torch.Tensor], titles: Sequence[str], caption: str, scale: int | None) -> PILImage:
    """Panels side by side, each enlarged by nearest neighbour and titled, with ``caption`` under the strip."""
    from PIL import Image, ImageDraw, ImageFont

    height = panels[0].shape[-2]
    scale = max(1, -(-PANEL_MIN_HEIGHT // height)) if scale is None else int(scale)
    tiles = [Image.fromarray(_to_uint8(p)).resize((p.shape[-1] * scale, height * scale), Image.NEAREST) for p in panels]
    font = ImageFont.load_default(size=12)
    gap, top, bottom = 4, 18, 18 if caption else 0
    width = sum(t.width for t in tiles) + gap * (len(tiles) - 1)
    strip = Image.new("RGB", (width, top + tiles[0].height + bottom), "white")
    draw, x = ImageDraw.Draw(strip), 0
    for tile, title in zip(tiles, titles):
        strip.paste(tile, (x, top))
        draw.text((x + 2, 2), title, fill="black", font=font)
        x += tile.width + gap
    if caption:
        draw.text((2, top + tiles[0].height + 2), caption, fill="black", font=font)
    return strip


def save_reconstruction(
    output_dir: str,
    source: str,
    image: torch.Tensor,
    pixel_mask: torch.Tensor,
    recon: torch.Tensor,
    pasted: torch.Tensor,
    affine: torch.Tensor | None = None,
    extra_panels: Sequence[torch.Tensor] = (),
    extra_titles: Sequence[str] = (),
    scale: int | None = None,
) -> list[str]:
    """Write the panel (and, in 3D, the NIfTI reconstruction) of one image; return the paths written.

    The PNG shows ``input | masked | reconstruction | reconstruction + visible`` (then ``extra_panels``), each
    enlarged by an integer nearest-neighbour factor (to at least :data:`PANEL_MIN_HEIGHT` pixels unless ``scale``
    is given) and titled, with the masked-pixel PSNR of the model and of the visible-mean fill (the score a model
    that learned nothing gets, ``maskseg_monai.metrics.visible_mean_fill``) written under it.

    Args:
        output_dir: destination folder.
        source: the input's file name (only its stem is used).
        image, pixel_mask, recon, pasted: ``[C, *spatial]`` tensors (mask ``[1, *spatial]``), intensities in [0, 1].
        affine: the input's affine, for the 3D NIfTI output.
        extra_panels: further ``[1, *spatial]`` maps in [0, 1] appended to the strip.
        extra_titles: their titles (default ``extra 1``, ...).
        scale: the enlargement factor; ``None`` picks it from the image height.
    """
    stem = output_stem(source)
    x, m = image.detach().float().cpu()[None], pixel_mask.detach().float().cpu()[None]
    model_psnr = float(region_psnr(pasted.detach().float().cpu()[None], x, m)[0])
    fill_psnr = float(region_psnr(visible_mean_fill(x, m), x, m)[0])
    ratio = float(m.mean())
    caption = f"masked-pixel PSNR: model {model_psnr:.2f} dB, visible-mean fill {fill_psnr:.2f} dB"
    masked = image * (1 - pixel_mask) + 0.5 * pixel_mask
    panels = [image, masked, recon, pasted]
    titles = ["input", f"masked ({ratio:.0%})", "reconstruction", "recon. + visible"]
    titles += [extra_titles[i] if i < len(extra_titles) else f"extra {i + 1}" for i in range(len(extra_panels))]
    if extra_panels:
        panels = [p.float().cpu() for p in panels]
        gray = [p.mean(0, keepdim=True) if p.shape[0] != image.shape[0] else p for p in panels]
        panels = gray + [e.float().cpu().expand_as(panels[0]) for e in extra_panels]
    written = []
    if image.ndim == 4:
        z = image.shape[-1] // 2
        panels = [p[..., z] for p in panels]
        titles[0] = f"input (slice {z})"
        import nibabel as nib

        vol = recon.detach().float().cpu().numpy()
        vol = vol[0] if vol.shape[0] == 1 else np.moveaxis(vol, 0, -1)
        aff = np.eye(4) if affine is None else np.asarray(affine.detach().cpu() if torch.is_tensor(affine) else affine)
        written.append(
            atomic_write(
                os.path.join(output_dir, f"{stem}_recon.nii.gz"),
                lambda tmp: nib.save(nib.Nifti1Image(vol.astype(np.float32), aff), tmp),
            )
        )
    strip = _panel_strip([p.float().cpu() for p in panels], titles, caption, scale)
    written.append(atomic_write(os.path.join(output_dir, f"{stem}_mae.png"), lambda tmp: strip.save(tmp, format="PNG")))
    return written
