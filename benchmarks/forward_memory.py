"""Peak extra memory of one generator forward pass, against ``forward_bytes``' estimate: the calibration
behind the tiler's plan (``cyclegan_core.inference.memory``).

Each configuration runs ``--repeats`` times, each in a fresh subprocess: the generator (seeded weights)
is built, run once on a 256² input to load its kernels, the peak RSS is reset (``clear_refs``), one no-grad
pass runs on a side x side input as ``Translator`` runs it (bf16: autocast and channels_last; or, with
``--runtimes openvino``, one inference of the converted model compiled at that precision), and VmHWM
minus the RSS before is that pass's peak. One JSON line per configuration: every repeat's peak, the worst,
the estimate at that precision and the bytes per pixel per ngf of the worst (after the estimate's fixed
64 MiB). The worst counts: glibc's arenas make the same pass vary by up to 2x from run to run.

    python benchmarks/forward_memory.py --generators resnet_9blocks unet_256 resnet_unet_adalin \\
        --ngf 64 --sizes 512 640 1024 --precisions fp32 bf16 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

MiB = 2**20
WARM_UP_SIDE = 256  # large enough for unet_256's eight halvings


def print_peak(run: Callable[[], object]) -> None:
    """Print the peak extra RSS of ``run()`` over the RSS before it (VmHWM reset by ``clear_refs``)."""
    from tiling import vm_bytes  # benchmarks/tiling.py, beside this script

    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = vm_bytes("VmRSS")
    run()
    print(json.dumps({"peak_bytes": vm_bytes("VmHWM") - before}))


def openvino_child(net: Any, multiple: int, side: int, precision: str, threads: int) -> None:
    """One measured OpenVINO inference (model converted and compiled, run once at 256² first)."""
    import numpy as np

    from cyclegan_core.inference.backends.openvino_runtime import compile_model, convert

    compiled = compile_model(convert(net, channels=3, multiple=multiple), precision, threads or 2)
    request = compiled.create_infer_request()
    request.infer({0: np.random.rand(1, 3, WARM_UP_SIDE, WARM_UP_SIDE).astype(np.float32)})
    image = np.random.rand(1, 3, side, side).astype(np.float32)
    print_peak(lambda: np.array(request.infer({0: image})[0]))


def child(generator: str, ngf: int, side: int, precision: str, threads: int, runtime: str) -> None:
    """One measured pass in this process; prints its peak extra bytes."""
    import torch

    from cyclegan_core.config import ModelConfig
    from cyclegan_core.networks import generator_from_config, size_multiple
    from cyclegan_core.precision import autocast, channels_last_on

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    net = generator_from_config(ModelConfig(generator=generator, ngf=ngf)).eval()
    if runtime == "openvino":
        openvino_child(net, size_multiple(generator), side, precision, threads)
        return
    memory_format = torch.channels_last if channels_last_on(cpu, precision) else torch.contiguous_format
    net.to(memory_format=memory_format)
    image = torch.rand(1, 3, side, side).mul_(2).sub_(1).contiguous(memory_format=memory_format)
    with torch.no_grad(), autocast(cpu, precision):
        net(torch.rand(1, 3, WARM_UP_SIDE, WARM_UP_SIDE).contiguous(memory_format=memory_format))

    def one_pass() -> None:
        with torch.no_grad(), autocast(cpu, precision):  # a context of its own, as each translate_tensor call has
            net(image).float()

    print_peak(one_pass)


def measure(args: argparse.Namespace, generator: str, side: int, precision: str, runtime: str) -> dict[str, Any]:
    from cyclegan_core.config import ModelConfig
    from cyclegan_core.inference.memory import forward_bytes

    peaks = []
    for _ in range(args.repeats):
        done = subprocess.run([sys.executable, __file__, "--child", generator, str(args.ngf), str(side), precision,
                               str(args.threads), runtime], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"{runtime} {generator} {side}² {precision}: {done.stderr.strip()[-2000:]}")
        peaks.append(json.loads(done.stdout.splitlines()[-1])["peak_bytes"])
    estimate = forward_bytes(ModelConfig(generator=generator, ngf=args.ngf), side, side, precision=precision)
    worst = max(peaks)
    return {"benchmark": "forward_memory", "runtime": runtime, "generator": generator, "ngf": args.ngf, "size": side,
            "precision": precision, "threads": args.threads, "peaks_mib": [round(p / MiB, 1) for p in peaks],
            "worst_mib": round(worst / MiB, 1), "estimate_mib": round(estimate / MiB, 1),
            "worst_over_estimate": round(worst / estimate, 2),
            "bytes_per_pixel_per_ngf": round(max(0, worst - 64 * MiB) / side / side / args.ngf, 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generators", nargs="+", default=["resnet_9blocks"])
    parser.add_argument("--ngf", type=int, default=64)
    parser.add_argument("--sizes", nargs="+", type=int, default=[512, 1024])
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--runtimes", nargs="+", choices=["torch", "openvino"], default=["torch"])
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        generator, ngf, side, precision, threads, runtime = args.child
        child(generator, int(ngf), int(side), precision, int(threads), runtime)
        return
    for runtime in args.runtimes:
        for generator in args.generators:
            for side in args.sizes:
                for precision in args.precisions:
                    print(json.dumps(measure(args, generator, side, precision, runtime)), flush=True)


if __name__ == "__main__":
    main()
