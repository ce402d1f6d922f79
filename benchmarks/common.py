"""Helpers shared by the benchmark scripts: device timing, environment description, markdown output."""

from __future__ import annotations

import datetime
import gc
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # the working tree's maskseg_monai, also where it is not pip-installed
    sys.path.insert(1, REPO)

__all__ = [
    "append_results",
    "describe_environment",
    "free_memory",
    "is_oom",
    "markdown_table",
    "peak_memory_gib",
    "reset_peak_memory",
    "synchronize",
    "time_steps",
]


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    """Restart the peak-memory counter of a CUDA device."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float | None:
    """Peak allocated memory since the last reset, in GiB; ``None`` on CPU."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


def free_memory(device: torch.device) -> None:
    """Release cached allocations between cases."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def is_oom(err: BaseException) -> bool:
    """True for a CUDA (or CPU allocator) out-of-memory error."""
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


def time_steps(
    step: Callable[[], torch.Tensor], device: torch.device, warmup: int, steps: int
) -> tuple[float, torch.Tensor]:
    """Run ``warmup`` untimed then ``steps`` timed calls of ``step``; return (seconds per step, last output).

    On CUDA the timed region is bracketed by CUDA events and the only host synchronisation is the final one;
    on CPU it is measured with ``time.perf_counter``. The peak-memory counter is reset after the warm-up.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}.")
    out = None
    for _ in range(warmup):
        out = step()
    synchronize(device)
    reset_peak_memory(device)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(steps):
            out = step()
        end.record()
        end.synchronize()
        seconds = start.elapsed_time(end) / 1000.0
    else:
        t0 = time.perf_counter()
        for _ in range(steps):
            out = step()
        seconds = time.perf_counter() - t0
    return seconds / steps, out


def describe_environment(device: torch.device) -> dict[str, str]:
    """Device name and library versions, for the results file."""
    import monai

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return {
        "device": name,
        "torch": torch.__version__,
        "CUDA": str(torch.version.cuda) if device.type == "cuda" else "-",
        "cuDNN": str(torch.backends.cudnn.version()) if device.type == "cuda" else "-",
        "monai": monai.__version__,
        "python": platform.python_version(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "unset"),
    }


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value >= 100:
            return f"{value:,.0f}"
        if value >= 1:
            return f"{value:.2f}"
        return f"{value:.3g}"
    return str(value)


def markdown_table(columns: Sequence[str], rows: Sequence[dict[str, object]]) -> str:
    """A GitHub markdown table of ``rows`` (dicts keyed by column name; missing or ``None`` cells print ``-``)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def append_results(path: str, title: str, device: torch.device, body: str, notes: Sequence[str] = ()) -> None:
    """Append a dated section (device, versions, the exact command, ``body``) to the markdown file ``path``."""
    env = describe_environment(device)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"## {title}: {env['device']}, {stamp}", ""]
    lines += [f"- {k}: {v}" for k, v in env.items()]
    lines += [f"- command: `{command}`", *[f"- {n}" for n in notes], "", body, ""]
    with open(path, "a", encoding="utf-8") as f:
        f.write("\n" + "\n".join(lines))
