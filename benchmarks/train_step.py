"""Training-step throughput of our masked autoencoders and UNETR against MONAI's networks (issues 8 and 15).

For each case (sizes of the issue; ``mainjob2d_p8``: the amlp bundle's main job) and each network (MONAI's
``MaskedAutoEncoderViT``/``UNETR``, a plain fused-attention MAE of the same sizes (``plain_mae.py``), our
``MaskedAutoencoderViT``/``UNETR``, ``AMLPMaskedAutoencoder`` with MPS + ARL + CCL), a training step
(forward, loss, backward, AdamW) on random inputs already on the device is timed in fp32, under bf16
autocast, and under bf16 autocast with ``torch.compile``. Reported: items/s (images in 2D, volumes in 3D),
milliseconds per step, achieved TFLOP/s (forward + backward FLOPs of one step, counted once with
``torch.utils.flop_counter.FlopCounterMode``), peak CUDA memory, and ratios to MONAI's fp32 step of the
same case, to our MAE step and to the plain MAE step in the same mode.

    python benchmarks/train_step.py --device cuda --cases all --output benchmarks/RESULTS.md
    python benchmarks/train_step.py --device cuda --cases mae2d_p16,mae3d_p8 --models ours,amlp --modes bf16+compile
    OMP_NUM_THREADS=2 python benchmarks/train_step.py --device cpu --cases mainjob2d_p8 --models plain,ours,amlp \
        --modes fp32 --steps 30 --repeats 9 --output benchmarks/RESULTS.md   # issue 15's CPU targets
    OMP_NUM_THREADS=1 python benchmarks/train_step.py --device cpu --quick   # tiny sizes, a smoke run
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from common import append_results, free_memory, is_oom, markdown_table, peak_memory_gib, time_steps
from plain_mae import PlainMAE, plain_mae_loss

CASE_NAMES = ("mae2d_p16", "mae2d_p8", "mae3d_p16", "mae3d_p8", "unetr3d_p16", "mainjob2d_p8")
MAE_MODELS = ("monai", "plain", "ours", "amlp")
UNETR_MODELS = ("monai", "ours")
MODES = ("fp32", "bf16", "bf16+compile")
COLUMNS = (
    "case",
    "model",
    "mode",
    "batch",
    "items/s",
    "ms/step",
    "TFLOP/s",
    "peak GiB",
    "vs MONAI fp32",
    "vs ours (same mode)",
    "vs plain (same mode)",
    "note",
)

VIT_B = {"hidden_size": 768, "mlp_dim": 3072, "num_layers": 12, "num_heads": 12}
DECODER_2D = {"decoder_hidden_size": 512, "decoder_mlp_dim": 2048, "decoder_num_layers": 8, "decoder_num_heads": 16}
DECODER_3D = {"decoder_hidden_size": 384, "decoder_mlp_dim": 1536, "decoder_num_layers": 8, "decoder_num_heads": 12}
TINY_ENCODER = {"hidden_size": 48, "mlp_dim": 96, "num_layers": 2, "num_heads": 4}
TINY_DECODER_2D = {"decoder_hidden_size": 32, "decoder_mlp_dim": 64, "decoder_num_layers": 1, "decoder_num_heads": 4}
TINY_DECODER_3D = {"decoder_hidden_size": 24, "decoder_mlp_dim": 48, "decoder_num_layers": 1, "decoder_num_heads": 4}
# the amlp bundle's main job (bundles/amlp/configs/train.json): 64x64 crops, 1 channel, patch 8, ratio 0.5, batch 32
MAINJOB_ENCODER = {"hidden_size": 192, "mlp_dim": 768, "num_layers": 6, "num_heads": 6}
MAINJOB_DECODER = {"decoder_hidden_size": 96, "decoder_mlp_dim": 384, "decoder_num_layers": 2, "decoder_num_heads": 4}


@dataclass(frozen=True)
class Case:
    """One benchmark workload: the same sizes for every network compared."""

    name: str
    spatial_dims: int
    in_channels: int
    img_size: int
    patch_size: int
    batch_size: int
    mask_ratio: float = 0.75
    encoder: dict = field(default_factory=lambda: dict(VIT_B))
    decoder: dict = field(default_factory=dict)
    out_channels: int = 3
    feature_size: int = 16

    @property
    def is_unetr(self) -> bool:
        return self.name.startswith("unetr")

    @property
    def models(self) -> tuple[str, ...]:
        return UNETR_MODELS if self.is_unetr else MAE_MODELS


def make_cases(quick: bool) -> dict[str, Case]:
    """The issue's cases, or tiny versions of them (same structure, patch/ratio relations kept) with ``quick``."""
    if not quick:
        cases = [
            Case("mae2d_p16", 2, 3, 224, 16, 128, 0.75, decoder=DECODER_2D),
            Case("mae2d_p8", 2, 3, 224, 8, 32, 0.25, decoder=DECODER_2D),
            Case("mae3d_p16", 3, 1, 96, 16, 64, 0.75, decoder=DECODER_3D),
            Case("mae3d_p8", 3, 1, 96, 8, 16, 0.75, decoder=DECODER_3D),
            Case("unetr3d_p16", 3, 1, 96, 16, 8),
            Case("mainjob2d_p8", 2, 1, 64, 8, 32, 0.5, encoder=MAINJOB_ENCODER, decoder=MAINJOB_DECODER),
        ]
    else:
        # MONAI's UNETR fixes 12 layers and patch 16, so the tiny UNETR keeps them and shrinks the width; it runs
        # in 2D (32x32): a 3D step at the smallest size patch 16 allows takes ~0.3 s on one CPU core.
        tiny_unetr = {"hidden_size": 48, "mlp_dim": 96, "num_layers": 12, "num_heads": 4}
        cases = [
            Case("mae2d_p16", 2, 3, 32, 8, 2, 0.75, encoder=TINY_ENCODER, decoder=TINY_DECODER_2D),
            Case("mae2d_p8", 2, 3, 32, 4, 2, 0.25, encoder=TINY_ENCODER, decoder=TINY_DECODER_2D),
            Case("mae3d_p16", 3, 1, 16, 8, 2, 0.75, encoder=TINY_ENCODER, decoder=TINY_DECODER_3D),
            Case("mae3d_p8", 3, 1, 16, 4, 2, 0.75, encoder=TINY_ENCODER, decoder=TINY_DECODER_3D),
            Case("unetr3d_p16", 2, 1, 32, 16, 2, encoder=tiny_unetr, feature_size=4),
            Case("mainjob2d_p8", 2, 1, 32, 8, 2, 0.5, encoder=TINY_ENCODER, decoder=TINY_DECODER_2D),
        ]
    return {c.name: c for c in cases}


LossFn = Callable[[object, torch.Tensor, torch.Tensor], torch.Tensor]


def build(case: Case, model: str, device: torch.device) -> tuple[torch.nn.Module, LossFn]:
    """The network of ``model`` for ``case`` on ``device`` and its loss ``loss_fn(output, image, label)``."""
    if case.is_unetr:
        from monai.losses import DiceCELoss

        dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)
        enc = case.encoder
        common = {"feature_size": case.feature_size, "hidden_size": enc["hidden_size"], "mlp_dim": enc["mlp_dim"]}
        common |= {"num_heads": enc["num_heads"], "spatial_dims": case.spatial_dims, "qkv_bias": True}
        if model == "monai":
            from monai.networks.nets import UNETR as MonaiUNETR

            net = MonaiUNETR(case.in_channels, case.out_channels, case.img_size, **common)
        else:
            from maskseg_monai.networks import UNETR

            net = UNETR(
                case.in_channels,
                case.out_channels,
                case.img_size,
                patch_size=case.patch_size,
                num_layers=enc["num_layers"],
                **common,
            )
        return net.to(device), lambda out, image, label: dice_ce(out, label)

    if model == "monai":
        from monai.networks.nets import MaskedAutoEncoderViT

        net = MaskedAutoEncoderViT(
            case.in_channels,
            case.img_size,
            case.patch_size,
            masking_ratio=case.mask_ratio,
            spatial_dims=case.spatial_dims,
            qkv_bias=True,
            **case.encoder,
            **case.decoder,
        )

        # MONAI's MAE returns (pred [B, L, P], mask [B, L]) and no loss: MAE's loss over masked patches.
        return net.to(device), lambda out, image, label: plain_mae_loss(out, image, case.patch_size)

    sizes = dict(
        in_channels=case.in_channels,
        img_size=case.img_size,
        patch_size=case.patch_size,
        mask_ratio=case.mask_ratio,
        spatial_dims=case.spatial_dims,
        **case.encoder,
        **case.decoder,
    )
    if model == "plain":
        return PlainMAE(**sizes).to(device), lambda out, image, label: plain_mae_loss(out, image, case.patch_size)

    if model == "ours":
        from maskseg_monai.losses import MaskedReconstructionLoss
        from maskseg_monai.networks import MaskedAutoencoderViT

        loss = MaskedReconstructionLoss(case.patch_size)
        return MaskedAutoencoderViT(**sizes).to(device), lambda out, image, label: loss(out, image)
    if model == "amlp":
        from maskseg_monai.losses import AMLPLoss
        from maskseg_monai.networks import AMLPMaskedAutoencoder

        # MPS on every image (mps_prob 1) and the CCL-head rule from the first step (mps_warmup 0);
        # ARL and CCL with the amlp bundle's defaults.
        net = AMLPMaskedAutoencoder(**sizes, use_mps=True, mps_warmup=0, mps_prob=1.0, mps_lesion_rule="head")
        if not (net.use_mps and net.masking.prob == 1.0 and net.masking.warmup == 0):
            raise RuntimeError("AMLP benchmark expects MPS active on every image from the first step.")
        loss = AMLPLoss(case.patch_size, arl_gamma=1.0, arl_weight=1.0, ccl_weight=0.1)
        return net.to(device), lambda out, image, label: loss(out, image)
    raise ValueError(f"Unsupported model: {model}, available options are {list(MAE_MODELS)}.")


def make_inputs(case: Case, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Random images ``[B, C, *spatial]`` and, for UNETR, random labels ``[B, 1, *spatial]``."""
    shape = (case.batch_size, case.in_channels, *([case.img_size] * case.spatial_dims))
    image = torch.rand(shape, device=device)
    label = None
    if case.is_unetr:
        label = torch.randint(0, case.out_channels, (shape[0], 1, *shape[2:]), device=device)
    return image, label


def make_step(
    net: torch.nn.Module,
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    image: torch.Tensor,
    label: torch.Tensor | None,
    bf16: bool,
    compile: bool,
) -> tuple[Callable[[], torch.Tensor], Callable[[], torch.Tensor]]:
    """Return (``step``: zero_grad, forward, loss, backward, AdamW; ``forward_backward``: the same without the
    optimizer, for FLOP counting). ``compile`` compiles forward + loss with ``torch.compile``."""

    def forward_loss() -> torch.Tensor:
        with torch.autocast(image.device.type, dtype=torch.bfloat16, enabled=bf16):
            return loss_fn(net(image), image, label)

    fwd = torch.compile(forward_loss) if compile else forward_loss

    def forward_backward() -> torch.Tensor:
        loss = fwd()
        loss.backward()
        return loss.detach()

    def step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = forward_backward()
        optimizer.step()
        return loss

    return step, forward_backward


def count_flops(forward_backward: Callable[[], torch.Tensor], device: torch.device) -> int:
    """FLOPs of one forward + backward pass, counted with ``FlopCounterMode``.

    On CPU, fused attention has no FLOP formula, so the count runs with the math SDPA backend (same FLOPs).
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    if device.type == "cpu":
        with sdpa_kernel([SDPBackend.MATH]), counter:
            forward_backward()
    else:
        with counter:
            forward_backward()
    return counter.get_total_flops()


def make_optimizer(net: torch.nn.Module, device: torch.device, fused: bool) -> torch.optim.Optimizer:
    """AdamW as MAE trains (betas 0.9/0.95, weight decay 0.05)."""
    params = [p for p in net.parameters() if p.requires_grad]
    kwargs = {"fused": True} if fused and device.type == "cuda" else {}
    return torch.optim.AdamW(params, lr=1.5e-4, betas=(0.9, 0.95), weight_decay=0.05, **kwargs)


def run_one(
    case: Case, model: str, mode: str, device: torch.device, args: argparse.Namespace, flops: dict
) -> dict[str, object]:
    """Time one (case, model, mode); failures become a note ("OOM", "fails under bf16 (RuntimeError)")."""
    row: dict[str, object] = {"case": case.name, "model": model, "mode": mode, "batch": case.batch_size}
    bf16, compile = mode != "fp32", mode.endswith("+compile")
    net = optimizer = image = label = step = fb = None
    try:
        torch.manual_seed(0)
        net, loss_fn = build(case, model, device)
        net.train()
        optimizer = make_optimizer(net, device, args.fused_adamw)
        image, label = make_inputs(case, device)
        if (case.name, model) not in flops:  # counted once per case and network, eagerly (same FLOPs in every mode)
            _, fb = make_step(net, loss_fn, optimizer, image, label, bf16, compile=False)
            flops[(case.name, model)] = count_flops(fb, device)
            optimizer.zero_grad(set_to_none=True)
        step, fb = make_step(net, loss_fn, optimizer, image, label, bf16, compile)
        warmup = args.warmup + (args.compile_warmup if compile else 0)
        seconds, loss = time_steps(step, device, warmup, args.steps)
        loss_value = float(loss)
        row["ms/step"] = seconds * 1e3
        row["items/s"] = case.batch_size / seconds
        row["peak GiB"] = peak_memory_gib(device)
        n = flops.get((case.name, model))
        row["TFLOP/s"] = n / seconds / 1e12 if n else None
        row["note"] = "" if math.isfinite(loss_value) else f"non-finite loss {loss_value}"
    except Exception as err:  # noqa: BLE001 - a failing mode is a result, the benchmark goes on
        if is_oom(err):
            row["note"] = "OOM"
        else:
            row["note"] = f"fails under {mode} ({type(err).__name__})"
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        print(f"[{case.name}/{model}/{mode}] {type(err).__name__}: {first_line[:300]}", file=sys.stderr)
    finally:
        del net, optimizer, image, label, step, fb
        if compile:
            torch._dynamo.reset()
        free_memory(device)
    return row


def median_round(found: list[dict[str, object]]) -> dict[str, object]:
    """The round of median ms/step among ``found`` (rounds of one case, model and mode), its note giving the
    min-max over rounds; a failed round (no ms/step) is returned as it is."""
    timed = sorted((r for r in found if r.get("ms/step") is not None), key=lambda r: r["ms/step"])
    if len(timed) < len(found):
        return next(r for r in found if r.get("ms/step") is None)
    row = dict(timed[(len(timed) - 1) // 2])
    if len(timed) > 1:
        spread = f"median of {len(timed)} rounds, {timed[0]['ms/step']:.1f}-{timed[-1]['ms/step']:.1f} ms/step"
        row["note"] = "; ".join(n for n in (row.get("note"), spread) if n)
    return row


def add_ratios(rows: list[dict[str, object]]) -> None:
    """Fill ``vs MONAI fp32`` (items/s over MONAI's fp32 row of the case) and ``vs ours (same mode)``."""
    by_key = {(r["case"], r["model"], r["mode"]): r for r in rows}
    for r in rows:
        speed = r.get("items/s")
        if speed is None:
            continue
        base = by_key.get((r["case"], "monai", "fp32"), {}).get("items/s")
        ours = by_key.get((r["case"], "ours", r["mode"]), {}).get("items/s")
        r["vs MONAI fp32"] = f"{speed / base:.2f}x" if base else None
        r["vs ours (same mode)"] = f"{speed / ours:.2f}x" if ours and r["model"] != "ours" else None
        plain = by_key.get((r["case"], "plain", r["mode"]), {}).get("items/s")
        r["vs plain (same mode)"] = f"{speed / plain:.2f}x" if plain and r["model"] != "plain" else None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--cases", default="all", help=f"'all' or a comma list of {', '.join(CASE_NAMES)}")
    p.add_argument("--models", default="all", help=f"'all' or a comma list of {', '.join(MAE_MODELS)}")
    p.add_argument("--modes", default="all", help=f"'all' or a comma list of {', '.join(MODES)}")
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="include the bf16+compile mode (default: on for CUDA, off on CPU)",
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes and few steps (a smoke run, not performance)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps (default 5, quick 1)")
    p.add_argument("--compile-warmup", type=int, default=None, help="extra untimed steps when compiling (default 5)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 20, quick 2)")
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="rounds over every (case, model, mode), interleaved (each round starting one network later) so that "
        "load drifts and allocator state hit each network alike; "
        "the table gives each one's median round (and the min-max of ms/step in its note). Default 1",
    )
    p.add_argument("--tf32", action="store_true", help="allow TF32 matmuls in fp32 mode (PyTorch default: off)")
    p.add_argument("--fused-adamw", action=argparse.BooleanOptionalAction, default=True, help="fused AdamW on CUDA")
    p.add_argument("--output", default=None, help="append a dated section with the table to this markdown file")
    args = p.parse_args(argv)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 5)
    args.compile_warmup = args.compile_warmup if args.compile_warmup is not None else (1 if args.quick else 5)
    args.steps = args.steps if args.steps is not None else (2 if args.quick else 20)
    return args


def _select(value: str, choices: tuple[str, ...], what: str) -> list[str]:
    if value == "all":
        return list(choices)
    picked = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in picked if v not in choices]
    if bad:
        raise SystemExit(f"Unsupported {what}: {bad}, available options are {list(choices)}.")
    return picked


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda given but CUDA is not available.")
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    compile_on = args.compile if args.compile is not None else device.type == "cuda"
    cases = make_cases(args.quick)
    modes = [m for m in _select(args.modes, MODES, "mode") if compile_on or not m.endswith("+compile")]
    models = _select(args.models, MAE_MODELS, "model")
    if args.repeats < 1:
        raise SystemExit(f"--repeats must be >= 1, got {args.repeats}.")
    flops: dict = {}
    rounds: dict[tuple[str, str, str], list[dict[str, object]]] = {}
    for r in range(args.repeats):
        for name in _select(args.cases, CASE_NAMES, "case"):
            case = cases[name]
            picked = [m for m in case.models if m in models]
            # each round starts one network later, so no network always runs right after the same other one
            for model in picked[r % len(picked) :] + picked[: r % len(picked)]:
                for mode in modes:
                    row = run_one(case, model, mode, device, args, flops)
                    rounds.setdefault((name, model, mode), []).append(row)
                    speed = row.get("items/s")
                    status = f"{speed:,.1f} items/s" if speed else row["note"]
                    line = f"[{r + 1}/{args.repeats}] {name:12s} {model:6s} {mode:13s} {status}"
                    print(line, file=sys.stderr, flush=True)
    rows = [median_round(found) for found in rounds.values()]
    add_ratios(rows)
    table = markdown_table(COLUMNS, rows)
    print(table)
    if args.output:
        label = (
            "train_step.py smoke run (--quick, tiny sizes: NOT performance numbers)" if args.quick else "train_step.py"
        )
        notes = [
            f"warm-up {args.warmup} (+{args.compile_warmup} when compiling), timed steps {args.steps}, "
            f"rounds {args.repeats} (interleaved; median round shown), "
            f"TF32 {'on' if args.tf32 else 'off'}, "
            f"AdamW {'fused' if args.fused_adamw and device.type == 'cuda' else 'foreach/default'}",
            "items/s: images/s in 2D, volumes/s in 3D; TFLOP/s from FlopCounterMode (forward + backward of one step)",
        ]
        if args.quick:
            notes.append(
                "quick sizes: ViT 48 wide x 2 blocks, 2D 32x32 / 3D 16^3, patch 8 for the p16 and 4 for the p8 cases; "
                "the UNETR case runs in 2D 32x32 (MONAI's 12 blocks, 48 wide, patch 16)"
            )
        append_results(args.output, label, device, table, notes)
    return rows


if __name__ == "__main__":
    main()
