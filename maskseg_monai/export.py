"""Export a bundle's network with ``torch.export``: ``python -m maskseg_monai.export``.

MONAI's ``python -m monai.bundle ckpt_export`` writes TorchScript (``torch.jit.script`` or ``trace``). TorchScript is
deprecated in the PyTorch this project pins, cannot compile our networks as they are (MONAI's attention block's
``dropout_rate`` property, shape f-strings in error messages), and a trace of the MAE/AMLP networks records one random
mask. ``torch.export`` captures the eager network as it runs (an :class:`torch.export.ExportedProgram`, saved as a
``.pt2`` file and loaded with ``torch.export.load``, no pickled code), so this command exports:

- ``unetr_seg``: ``network_def`` (image ``[1, C, *img_size]`` -> logits), the sliding-window crop size;
- ``oneshot``: ``network_def`` (query, support image, support mask ``[1, 1, H, W]`` -> two-class logits) at the given
  size; the graph does not check that the support mask has a foreground pixel (the bundle's support loader does);
- ``mae``, ``amlp``: with ``--encoder``, the ViT encoder (image -> patch tokens ``[1, L, D]``, no masking), the
  part that UNETR and one-shot fine-tuning reuse; their ``network_def`` draws random masks inside ``forward`` and is
  not exported.

The example inputs follow ``network_data_format`` of the bundle's ``metadata.json`` (spatial sizes such as ``"2*n"``
with ``--n``). After export the command runs the exported program and the eager network on the same inputs and fails
unless they agree within ``--atol``; the file is written only then (temporary file, then rename).

Example::

    cd bundles/unetr_seg
    python -m maskseg_monai.export --config_file configs/inference.json --meta_file configs/metadata.json \\
        --ckpt_file models/model.pt --filepath models/model.pt2
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser
from torch import nn

from maskseg_monai.experiments.cli import parse_overrides
from maskseg_monai.networks.transfer import find_encoder, read_checkpoint
from maskseg_monai.utils import atomic_write

__all__ = ["EncoderTokens", "example_inputs", "export_network", "load_weights", "main"]


class EncoderTokens(nn.Module):
    """A :class:`~maskseg_monai.networks.blocks.ViTEncoder` that returns only its final patch tokens ``[B, L, D]``."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)[0]


def _dim(value: int | str, n: int, where: str) -> int:
    if isinstance(value, int):
        return value
    text = str(value).replace(" ", "")
    factor, sep, var = text.partition("*")
    if text == "n":
        return n
    if sep and var == "n" and factor.isdigit():
        return int(factor) * n
    raise ValueError(f"{where}: spatial size {value!r} is neither an integer nor of the form 'k*n'.")


def example_inputs(meta: Mapping[str, Any], n: int = 32, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """One example input per ``network_data_format.inputs`` entry, in order: ``[1, num_channels, *spatial_shape]``.

    Inputs whose ``format`` is ``labels`` are binary masks (a random half of the pixels); the others uniform in their
    ``value_range``. A spatial size ``"k*n"`` is ``k * n``.

    Raises:
        ValueError: naming an input whose ``spatial_shape`` entry cannot be read.
    """
    gen = torch.Generator().manual_seed(seed)
    tensors = []
    for name, spec in meta["network_data_format"]["inputs"].items():
        shape = [1, int(spec["num_channels"])]
        shape += [_dim(s, n, f"network_data_format.inputs.{name}") for s in spec["spatial_shape"]]
        x = torch.rand(shape, generator=gen)
        if spec.get("format") == "labels":
            x = (x > 0.5).float()
        else:
            lo, hi = (spec.get("value_range") or [0, 1])[:2]
            x = lo + (hi - lo) * x
        tensors.append(x)
    return tuple(tensors)


def load_weights(network: nn.Module, ckpt_file: str | os.PathLike) -> None:
    """Load ``ckpt_file`` (:func:`~maskseg_monai.networks.transfer.read_checkpoint`: a bundle's ``CheckpointSaver``
    file or a bare state dict, read with ``weights_only=True``) into ``network``; the keys must match exactly.

    Raises:
        FileNotFoundError, ValueError: as ``read_checkpoint``.
        RuntimeError: naming the file when its keys do not match the network's.
    """
    source, state, _ = read_checkpoint(ckpt_file)
    try:
        network.load_state_dict(state)
    except RuntimeError as err:
        raise RuntimeError(f"{source}: the weights do not fit the bundle's network: {err}") from err


def export_network(
    config_file: str | os.PathLike | Sequence[str | os.PathLike],
    meta_file: str | os.PathLike,
    filepath: str | os.PathLike,
    ckpt_file: str | os.PathLike | None = None,
    net_id: str = "network_def",
    encoder: bool = False,
    n: int = 32,
    atol: float = 1e-4,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Export a bundle's network (or its ViT encoder) with ``torch.export`` and check it against the eager network.

    Args:
        config_file: the bundle config(s) defining ``net_id`` (e.g. ``configs/inference.json``).
        meta_file: the bundle's ``metadata.json`` (example input shapes).
        filepath: the ``.pt2`` file to write.
        ckpt_file: weights to load first (default: none, the network's initial weights).
        net_id: config id of the network.
        encoder: export the network's ViT encoder (:func:`~maskseg_monai.networks.transfer.find_encoder`) as
            :class:`EncoderTokens`, on the first (``image``) input.
        n: value of ``n`` in symbolic spatial sizes (``"2*n"``).
        atol: most absolute difference allowed between exported and eager outputs.
        overrides: config overrides (e.g. network sizes matching the checkpoint).

    Returns:
        ``{"filepath", "inputs" (shapes), "output" (shape), "max_abs_diff"}``.

    Raises:
        TypeError: when ``encoder`` is asked of a network without a ViT encoder.
        ValueError: when the outputs differ by more than ``atol`` (nothing is written then).
    """
    files = [str(config_file)] if isinstance(config_file, (str, os.PathLike)) else [str(f) for f in config_file]
    parser = ConfigParser()
    parser.read_config(files if len(files) > 1 else files[0])
    parser.update(dict(overrides or {}))
    network = parser.get_parsed_content(net_id, instantiate=True)
    if ckpt_file:
        load_weights(network, ckpt_file)
    meta = json.loads(Path(meta_file).read_text())
    inputs = example_inputs(meta, n)
    if encoder:
        network, inputs = EncoderTokens(find_encoder(network)), inputs[:1]
    network = network.eval()
    with torch.no_grad():
        program = torch.export.export(network, inputs)
        eager, exported = network(*inputs), program.module()(*inputs)
    diff = float((eager - exported).abs().max())
    if not diff <= atol:
        raise ValueError(f"the exported program differs from the eager network by {diff:.3g} > atol {atol}.")
    atomic_write(filepath, lambda tmp: torch.export.save(program, tmp))
    return {
        "filepath": str(filepath),
        "inputs": [list(x.shape) for x in inputs],
        "output": list(eager.shape),
        "max_abs_diff": diff,
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m maskseg_monai.export",
        description="Export a bundle's network (or, with --encoder, its ViT encoder) with torch.export to a .pt2 "
        "file, checked against the eager network on example inputs from metadata.json.",
    )
    parser.add_argument("--config_file", required=True, nargs="+", help="bundle config(s), e.g. configs/inference.json")
    parser.add_argument("--meta_file", required=True, help="the bundle's configs/metadata.json")
    parser.add_argument("--filepath", required=True, help="the .pt2 file to write, e.g. models/model.pt2")
    parser.add_argument("--ckpt_file", default=None, help="weights to load, e.g. models/model.pt (default: none)")
    parser.add_argument("--net_id", default="network_def", help="config id of the network (default network_def)")
    parser.add_argument("--encoder", action="store_true", help="export the ViT encoder only (MAE, AMLP)")
    parser.add_argument("--n", type=int, default=32, help="n of symbolic spatial sizes such as '2*n' (default 32)")
    parser.add_argument("--atol", type=float, default=1e-4, help="tolerance of the eager check (default 1e-4)")
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override (JSON value), repeatable",
    )
    args = parser.parse_args(argv)
    overrides = parse_overrides(parser, args.override, {}, "the export")
    report = export_network(
        args.config_file, args.meta_file, args.filepath, args.ckpt_file, args.net_id, args.encoder, args.n,
        args.atol, overrides,
    )  # fmt: skip
    print(
        f"exported {report['filepath']}: inputs {report['inputs']} -> output {report['output']}, "
        f"max |exported - eager| = {report['max_abs_diff']:.3g}"
    )
    return report


if __name__ == "__main__":
    main()
