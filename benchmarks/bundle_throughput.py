"""End-to-end throughput of the amlp bundle's training loop against its isolated step, and one-shot latency (issue 8).

1. The amlp bundle (``bundles/amlp/configs/train.json``) is parsed with ``monai.bundle.ConfigParser`` and
   overrides (image size, channels, patch size, network sizes, batch size, workers, device, one epoch, AMR off
   at a fixed mask ratio, no validation) on a synthetic datalist of PNG (2D) or NIfTI (3D) files written to a
   temporary bundle root. The bundle's own network, loss, optimizer and AMP settings are first timed as an
   isolated step on random inputs already on the device; then ``train#trainer.run()`` runs the bundle's
   training loop (data loading, transforms, host-to-device copies and every training handler included) and
   the iterations after the warm-up are timed from ignite events. Reported: items/s of both and their ratio.
   Checkpoint writing at the end of the epoch falls outside the timed iterations.
2. One-shot inference latency: the oneshot bundle's SG-One (``bundles/oneshot/configs/inference.json``,
   random weights) through :class:`maskseg_monai.inferers.OneShotInferer`, for a 2D 512x512 query and for a
   3D 256x256x64 volume segmented slice by slice; milliseconds per query (median).
3. Optionally (``--main-demo``) the wall time of the main job's built-in demo,
   ``python -m monai.bundle run training --config_file bundles/amlp/configs/train.json`` in a fresh bundle root.

    python benchmarks/bundle_throughput.py --device cuda --num-workers 8 --output benchmarks/RESULTS.md
    OMP_NUM_THREADS=1 python benchmarks/bundle_throughput.py --device cpu --quick   # tiny sizes, a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from common import REPO, append_results, markdown_table, synchronize, time_steps

AMLP_TRAIN = os.path.join(REPO, "bundles", "amlp", "configs", "train.json")
ONESHOT_INFERENCE = os.path.join(REPO, "bundles", "oneshot", "configs", "inference.json")
COLUMNS = ("measurement", "setting", "value", "unit", "ratio", "note")
VIT_B = {"hidden_size": 768, "mlp_dim": 3072, "num_layers": 12, "num_heads": 12}
DECODER_2D = {"decoder_hidden_size": 512, "decoder_mlp_dim": 2048, "decoder_num_layers": 8, "decoder_num_heads": 16}
DECODER_3D = {"decoder_hidden_size": 384, "decoder_mlp_dim": 1536, "decoder_num_layers": 8, "decoder_num_heads": 12}
TINY = {"hidden_size": 48, "mlp_dim": 96, "num_layers": 2, "num_heads": 4}
TINY_DECODER = {"decoder_hidden_size": 24, "decoder_mlp_dim": 48, "decoder_num_layers": 1, "decoder_num_heads": 4}


def write_dataset(root: str, spatial_dims: int, in_channels: int, img_size: int, n_train: int, n_files: int) -> str:
    """Write ``n_files`` random images and a datalist whose ``training`` list cycles through them ``n_train``
    times (2 ``validation`` entries); return the datalist path."""
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    files = []
    for i in range(n_files):
        if spatial_dims == 2:
            from PIL import Image

            shape = (img_size, img_size) if in_channels == 1 else (img_size, img_size, in_channels)
            name = f"images/img{i:03d}.png"
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(os.path.join(root, name))
        else:
            import nibabel as nib

            if in_channels != 1:
                raise ValueError(f"3D bundle benchmark writes single-channel volumes, got in_channels={in_channels}.")
            name = f"images/vol{i:03d}.nii.gz"
            vol = rng.integers(0, 256, (img_size,) * 3, dtype=np.uint8)
            nib.save(nib.Nifti1Image(vol, np.eye(4)), os.path.join(root, name))
        files.append(name)
    datalist = {
        "training": [{"image": files[i % n_files]} for i in range(n_train)],
        "validation": [{"image": files[i % n_files]} for i in range(2)],
    }
    path = os.path.join(root, "datalist.json")
    with open(path, "w") as f:
        json.dump(datalist, f)
    return path


def bundle_overrides(args: argparse.Namespace, root: str, datalist: str, n_items: int) -> dict:
    """Config overrides of the amlp bundle for the benchmark sizes."""
    encoder = TINY if args.quick else VIT_B
    decoder = TINY_DECODER if args.quick else (DECODER_2D if args.spatial_dims == 2 else DECODER_3D)
    return {
        "bundle_root": root,
        "datalist": datalist,
        "device": f"$torch.device('{args.device}')",
        "amp": args.amp,
        "compile": args.compile,
        "resume": False,
        "spatial_dims": args.spatial_dims,
        "in_channels": args.in_channels,
        "img_size": args.img_size,
        "patch_size": args.patch_size,
        "use_amr": False,
        "mask_ratio": args.mask_ratio,
        "mps_warmup": 0,
        "mps_start": 0,
        "batch_size": args.batch_size,
        "steps_per_epoch": max(1, n_items // args.batch_size),
        "num_workers": args.num_workers,
        "epochs": 1,
        "val_interval": 10**6,
        **encoder,
        **decoder,
    }


def bundle_throughput(args: argparse.Namespace, device: torch.device) -> list[dict[str, object]]:
    """Isolated step and end-to-end training loop of the amlp bundle on the same sizes and objects."""
    from ignite.engine import Events
    from monai.bundle import ConfigParser

    n_iters = args.warmup + args.steps
    n_items = n_iters * args.batch_size
    with tempfile.TemporaryDirectory(prefix="amlp_bench_") as root:
        datalist = write_dataset(
            root, args.spatial_dims, args.in_channels, args.img_size, n_items, min(n_items, args.files)
        )
        parser = ConfigParser()
        parser.read_config(AMLP_TRAIN)
        parser.update(bundle_overrides(args, root, datalist, n_items))
        parser.get_parsed_content("initialize")
        trainer = parser.get_parsed_content("train#trainer")
        if len(trainer.data_loader) != n_iters:
            raise RuntimeError(f"expected {n_iters} iterations per epoch, got {len(trainer.data_loader)}.")
        network, loss_fn, optimizer = trainer.network, trainer.loss_function, trainer.optimizer

        # isolated step: the bundle's own objects, random inputs already on the device, the trainer's AMP settings
        shape = (args.batch_size, args.in_channels, *([args.img_size] * args.spatial_dims))
        x = torch.rand(shape, device=device)

        def step() -> torch.Tensor:
            optimizer.zero_grad(set_to_none=trainer.optim_set_to_none)
            with torch.autocast(device.type, **trainer.amp_kwargs, enabled=trainer.amp):
                loss = loss_fn(network(x), x)
            loss.backward()
            optimizer.step()
            return loss.detach()

        warmup = args.warmup + (args.compile_warmup if args.compile else 0)
        isolated_s, _ = time_steps(step, device, warmup, args.steps)

        # end-to-end: the bundle's training loop, timed from iteration `warmup` to the last one
        marks: dict[str, float] = {}

        def mark(name: str):
            def handler(_engine) -> None:
                synchronize(device)
                marks[name] = time.perf_counter()

            return handler

        trainer.add_event_handler(Events.ITERATION_COMPLETED(once=args.warmup), mark("start"))
        trainer.add_event_handler(Events.ITERATION_COMPLETED(once=n_iters), mark("end"))
        trainer.run()
        bundle_s = (marks["end"] - marks["start"]) / args.steps

    size = "x".join([str(args.img_size)] * args.spatial_dims)
    setting = (
        f"{args.spatial_dims}D {size}x{args.in_channels}ch, patch {args.patch_size}, ratio {args.mask_ratio}, "
        f"batch {args.batch_size}, amp {args.amp}, compile {args.compile}, workers {args.num_workers}"
    )
    iso, e2e = args.batch_size / isolated_s, args.batch_size / bundle_s
    return [
        {"measurement": "amlp isolated step", "setting": setting, "value": iso, "unit": "items/s"},
        {
            "measurement": "amlp bundle end-to-end",
            "setting": setting,
            "value": e2e,
            "unit": "items/s",
            "ratio": f"{e2e / iso:.2f}x isolated",
            "note": "data loading, transforms, H2D copy and training handlers included",
        },
    ]


def oneshot_latency(args: argparse.Namespace, device: torch.device) -> list[dict[str, object]]:
    """Milliseconds per query of SG-One + OneShotInferer, 2D image and 3D volume (slice-wise)."""
    from monai.bundle import ConfigParser

    from maskseg_monai.inferers import OneShotInferer

    parser = ConfigParser()
    parser.read_config(ONESHOT_INFERENCE)
    parser.update({"device": f"$torch.device('{args.device}')"})
    net = parser.get_parsed_content("network_def").to(device).eval()
    chunks, slice_batch = parser["chunks"], parser["slice_batch_size"]
    size2d, (size3d, depth) = (64, (64, 8)) if args.quick else (512, (256, 64))
    rows = []
    for name, spatial in (("2D", (size2d, size2d)), ("3D slice-wise", (size3d, size3d, depth))):
        g = torch.Generator().manual_seed(0)
        support = torch.rand((1, *spatial), generator=g)
        label = torch.zeros((1, *spatial))
        centre = [s // 2 for s in spatial[:2]]
        r = max(2, spatial[0] // 8)
        label[:, centre[0] - r : centre[0] + r, centre[1] - r : centre[1] + r] = 1  # a square on every slice
        inferer = OneShotInferer(support, label, chunks=chunks, slice_batch_size=slice_batch)
        query = torch.rand((1, 1, *spatial), generator=g).to(device)

        def run() -> torch.Tensor:
            with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
                return inferer(query, net)  # noqa: B023 - called within this iteration

        times = []
        for i in range(args.latency_warmup + args.latency_runs):
            synchronize(device)
            t0 = time.perf_counter()
            out = run()
            synchronize(device)
            if i >= args.latency_warmup:
                times.append(time.perf_counter() - t0)
        if tuple(out.shape) != (1, 2, *spatial):
            raise RuntimeError(f"unexpected one-shot output {tuple(out.shape)} for query {tuple(query.shape)}.")
        setting = f"{'x'.join(map(str, spatial))} query, SG-One {parser['backbone']}, amp {args.amp}"
        if len(spatial) == 3:
            setting += f", chunks {chunks}, slice batch {slice_batch}"
        rows.append(
            {
                "measurement": f"one-shot latency {name}",
                "setting": setting,
                "value": 1e3 * statistics.median(times),
                "unit": "ms/query",
                "note": f"median of {len(times)}, min {1e3 * min(times):.1f} ms",
            }
        )
    return rows


def main_demo() -> list[dict[str, object]]:
    """Wall time of the main job's built-in demo (AMLP on the demo data) in a fresh bundle root."""
    with tempfile.TemporaryDirectory(prefix="amlp_demo_") as root:
        cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", AMLP_TRAIN]
        cmd += ["--bundle_root", root]
        t0 = time.perf_counter()
        pythonpath = os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH", "")) if p)
        env = dict(os.environ, PYTHONPATH=pythonpath)
        subprocess.run(cmd, check=True, cwd=root, env=env, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - t0
    return [
        {
            "measurement": "main job demo",
            "setting": "python -m monai.bundle run training --config_file bundles/amlp/configs/train.json",
            "value": seconds,
            "unit": "s",
            "ratio": f"{seconds / 300:.2f}x of 5 min",
            "note": f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, demo data built on first use",
        }
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="tiny sizes and few steps (a smoke run, not performance)")
    p.add_argument("--spatial-dims", type=int, choices=(2, 3), default=2)
    p.add_argument("--img-size", type=int, default=None, help="default 224 (2D) / 96 (3D); quick 32 / 16")
    p.add_argument("--in-channels", type=int, default=None, help="default 3 (2D) / 1 (3D)")
    p.add_argument("--patch-size", type=int, default=None, help="default 16; quick 8")
    p.add_argument("--mask-ratio", type=float, default=0.75)
    p.add_argument("--batch-size", type=int, default=None, help="default 128 (2D) / 64 (3D); quick 2")
    p.add_argument("--num-workers", type=int, default=None, help="data loader workers (default 8; quick 0)")
    p.add_argument("--files", type=int, default=64, help="distinct image files the datalist cycles through")
    p.add_argument("--warmup", type=int, default=None, help="untimed iterations (default 5; quick 1)")
    p.add_argument("--compile-warmup", type=int, default=5, help="extra untimed isolated steps when compiling")
    p.add_argument("--steps", type=int, default=None, help="timed iterations (default 20; quick 2)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None, help="bf16 (default: on CUDA)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False, help="bundle 'compile' key")
    p.add_argument("--latency-warmup", type=int, default=None, help="untimed one-shot queries (default 3; quick 1)")
    p.add_argument("--latency-runs", type=int, default=None, help="timed one-shot queries (default 10; quick 2)")
    p.add_argument("--no-oneshot", dest="oneshot", action="store_false", help="skip the one-shot latency")
    p.add_argument("--main-demo", action="store_true", help="also time the main job's demo (minutes on CPU)")
    p.add_argument("--output", default=None, help="append a dated section with the table to this markdown file")
    a = p.parse_args(argv)
    two_d, q = a.spatial_dims == 2, a.quick
    defaults = {
        "img_size": (32 if two_d else 16) if q else (224 if two_d else 96),
        "in_channels": 3 if two_d else 1,
        "patch_size": 8 if q else 16,
        "batch_size": 2 if q else (128 if two_d else 64),
        "num_workers": 0 if q else 8,
        "warmup": 1 if q else 5,
        "steps": 2 if q else 20,
        "latency_warmup": 1 if q else 3,
        "latency_runs": 2 if q else 10,
        "amp": a.device.startswith("cuda"),
    }
    for k, v in defaults.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    return a


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda given but CUDA is not available.")
    rows = bundle_throughput(args, device)
    if args.oneshot:
        rows += oneshot_latency(args, device)
    if args.main_demo:
        rows += main_demo()
    table = markdown_table(COLUMNS, rows)
    print(table)
    if args.output:
        label = (
            "bundle_throughput.py smoke run (--quick, tiny sizes: NOT performance numbers)"
            if args.quick
            else "bundle_throughput.py"
        )
        notes = [f"warm-up {args.warmup}, timed iterations {args.steps}, items/s: images/s in 2D, volumes/s in 3D"]
        append_results(args.output, label, device, table, notes)
    return rows


if __name__ == "__main__":
    main()
