"""A 64-megapixel image through `cyclegan translate --memory-budget` in a subprocess, its peak RSS measured.

The generator is small (resnet_6blocks, ngf 4) so the test runs in about a minute on 2 CPU cores, yet
an untiled pass would still blow the budget: its first activations alone are 2 x 4 channels x 64 MP x
4 B = 2 GiB, and the estimate (``cyclegan_core.inference.memory.forward_bytes``) of the whole pass is 7 GiB. The
peak RSS of the CLI process (``os.wait4`` in a small launcher: that process and nothing else) must stay under
the 2 GiB budget,
interpreter, torch, the decoded input and the encoded output included.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cyclegan_core.config import ModelConfig
from cyclegan_core.data.images import MAX_PIXELS
from cyclegan_core.inference.backends import load_translator
from cyclegan_core.inference.memory import forward_bytes
from cyclegan_core.inference.translator import Translator
from cyclegan_core.networks import generator_from_config

# Linux keeps a process's ru_maxrss across exec, and a child forked from this pytest process starts
# with pytest's resident set (gigabytes late in the suite): the CLI is started by a small launcher
# process instead, which reports the CLI's own peak (os.wait4) as its last stderr line.
LAUNCHER = """
import os, subprocess, sys
child = subprocess.Popen(sys.argv[1:])
_, status, usage = os.wait4(child.pid, 0)
print(f"MAXRSS_KB={usage.ru_maxrss}", file=sys.stderr)
sys.exit(os.waitstatus_to_exitcode(status))
"""
CFG = ModelConfig(generator="resnet_6blocks", ngf=4)
CLI = str(Path(sys.executable).with_name("cyclegan"))
SIDE = 8000
BUDGET = 2 * 2**30


def big_image(path: Path) -> Path:
    """An 8000 x 8000 RGB PNG (inside MAX_PIXELS): gradients and a checkerboard, so tiles differ."""
    ramp = np.linspace(0, 255, SIDE, dtype=np.float32)
    image = np.empty((SIDE, SIDE, 3), dtype=np.uint8)
    image[:, :, 0] = ramp[None, :]
    image[:, :, 1] = ramp[:, None]
    image[:, :, 2] = ((np.arange(SIDE)[:, None] // 500 + np.arange(SIDE)[None, :] // 500) % 2) * 200
    Image.fromarray(image).save(path, compress_level=1)
    return path


@pytest.mark.slow
def test_an_8000x8000_image_is_translated_by_tiles_under_the_memory_budget(tmp_path: Path) -> None:
    assert SIDE * SIDE <= MAX_PIXELS
    assert forward_bytes(CFG, SIDE, SIDE) > 3 * BUDGET, "an untiled pass must not fit this budget"
    torch.manual_seed(0)
    model = Translator(generator_from_config(CFG), None, CFG).save_pretrained(tmp_path / "model")
    source = big_image(tmp_path / "big.png")
    output = tmp_path / "big_out.png"
    # a machine that has translated with this model before: auto measured, the model converted (the session's
    # CYCLEGAN_CACHE_DIR), as the command's later runs find it; the first run holds ~110 MB more (the converter)
    load_translator(model, device="cpu")

    done = subprocess.run([sys.executable, "-c", LAUNCHER, CLI, "translate", str(source), str(output),
                           "--model", str(model), "--device", "cpu", "--memory-budget", "2GiB"],
                          capture_output=True, text=True, check=False)
    stdout, stderr = done.stdout, done.stderr
    assert done.returncode == 0, stderr[-3000:]
    peak = int(stderr.rstrip().rsplit("MAXRSS_KB=", 1)[1]) * 1024  # kilobytes on Linux
    assert peak < BUDGET, f"peak RSS {peak / 2**30:.2f} GiB exceeds the 2 GiB budget\n{stdout}\n{stderr[-2000:]}"
    tiled = [line for line in stderr.splitlines() if "tile(s)" in line]
    assert len(tiled) == 1 and ("run by OpenVINO" in tiled[0] or "run by the PyTorch tiler" in tiled[0]), stderr[-2000:]

    with Image.open(output) as out:
        assert out.size == (SIDE, SIDE) and out.mode == "RGB"
        pixels = np.asarray(out.crop((3900, 3900, 4100, 4100)))
    assert pixels.std() > 0, "a translated image, not a constant"
