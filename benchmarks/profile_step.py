"""Where the time of one CycleGAN training step goes: ``torch.profiler`` over a few steps, by category.

Same model and synthetic batch as ``train_step.py`` (its options are accepted here too). After the
warm-up steps, ``--steps`` steps run under the profiler; the self time of every operator (device time
on CUDA, CPU time on CPU) is summed per category and divided by the number of steps:

- ``convolution`` (forward and backward, cuDNN/GEMM kernels), ``normalization`` (instance/batch/layer
  norm and AdaLIN), ``padding`` (reflection pads and their backward), ``elementwise`` (activations,
  add/mul/div, dropout, where), ``reduction_loss`` (means, sums, losses), ``optimizer`` (Adam, fused
  or not, zero_grad), ``memory`` (copies, cat, layout changes, fills), ``other``.

Prints the top operators as a table on stderr and one JSON line on stdout::

    {"generator", "size", "batch", "precision", "device", "steps", "profiled_ms_per_step",
     "categories_ms_per_step": {...}, "categories_share": {...}, "top_ops": [[name, ms_per_step], ...]}

``--trace FILE`` also writes a Chrome trace (open in Perfetto). Example on a GPU::

    python benchmarks/profile_step.py --device cuda --size 256 --batch 8 --precision bf16 --trace t.json
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

# this folder is sys.path[0] when a script runs
from train_step import build_parser, build_step, configure_torch, parse_args, synchronize

# First match wins: order from the most specific names to the most generic.
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("optimizer", ("adam", "zero_", "_foreach", "optimizer")),
    ("padding", ("pad",)),
    ("normalization", ("norm", "adalin")),
    ("convolution", ("conv", "cudnn", "gemm", "mm", "addmm", "linear")),
    ("reduction_loss", ("mse", "l1_loss", "mean", "sum", "loss", "norm_except", "var", "std")),
    ("elementwise", ("relu", "tanh", "leaky", "add", "sub", "mul", "div", "where", "clamp", "dropout",
                     "sigmoid", "neg", "abs", "sqrt", "pow", "exp", "lerp", "fill", "threshold")),
    ("memory", ("copy", "cat", "contiguous", "clone", "empty", "zeros", "ones", "to", "stack", "slice",
                "index", "permute", "view", "reshape", "transpose", "expand", "flip", "split")),
)


def category(op_name: str) -> str:
    name = op_name.lower()
    for label, needles in CATEGORIES:
        if any(needle in name for needle in needles):
            return label
    return "other"


def self_time_us(event: Any, device: torch.device) -> float:
    """An operator's self time in microseconds on the device that did the work.

    On CUDA only host-side operator events count (their self device time is the time of the kernels
    they launched); the kernel events themselves are skipped so nothing is counted twice.
    """
    if device.type == "cuda":
        if event.device_type != DeviceType.CPU:
            return 0.0
        return float(event.self_device_time_total)
    return float(event.self_cpu_time_total)


def event_category(event: Any) -> str:
    """The category of one profiled operator; anything inside ``Optimizer.step``/``zero_grad`` is the
    optimizer's (a non-fused Adam runs plain sqrt/add/mul operators)."""
    parent = event
    while parent is not None:
        if parent.name.startswith("Optimizer."):
            return "optimizer"
        parent = parent.cpu_parent
    return category(event.name)


def summarize(events: Any, averages: Any, device: torch.device, steps: int, top: int) -> dict[str, Any]:
    """Per-step milliseconds by category (from ``prof.events()``) and the ``top`` operators (from
    ``prof.key_averages()``)."""
    totals: dict[str, float] = {}
    for event in events:
        ms = self_time_us(event, device) / 1000 / steps
        if ms > 0 and not event.name.startswith("ProfilerStep"):
            label = event_category(event)
            totals[label] = totals.get(label, 0.0) + ms
    total = sum(totals.values())
    ordered = sorted(totals.items(), key=lambda kv: -kv[1])
    per_op = [(event.key, self_time_us(event, device) / 1000 / steps) for event in averages]
    ranked = sorted((item for item in per_op if item[1] > 0), key=lambda item: item[1], reverse=True)[:top]
    return {
        "profiled_ms_per_step": round(total, 3),
        "categories_ms_per_step": {k: round(v, 3) for k, v in ordered},
        "categories_share": {k: round(v / total, 4) for k, v in ordered} if total else {},
        "top_ops": [[name, round(ms, 3)] for name, ms in ranked],
    }


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--trace", type=Path, default=None, help="also write a Chrome trace to this file")
    parser.add_argument("--top", type=int, default=25, help="operators in the table and in top_ops")
    args = parse_args(argv, parser)
    trace: Path | None = args.trace
    top: int = args.top
    configure_torch(args)
    device = torch.device(args.device)
    batch, precision = args.batch[0], args.precision[0]
    model, real_A, real_B = build_step(args, batch=batch, precision=precision)
    for _ in range(args.warmup):
        model.train_step(real_A, real_B)
    synchronize(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, record_shapes=False) as prof:
        for _ in range(args.steps):
            model.train_step(real_A, real_B)
        synchronize(device)
    events = prof.key_averages()
    sort_by = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(events.table(sort_by=sort_by, row_limit=top), file=sys.stderr)
    if trace is not None:
        prof.export_chrome_trace(str(trace))
    result = {
        "generator": args.generator,
        "size": args.size,
        "batch": batch,
        "precision": model.precision,
        "compile": args.compile,
        "device": device.type,
        "steps": args.steps,
        **summarize(prof.events(), events, device, args.steps, top),
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
