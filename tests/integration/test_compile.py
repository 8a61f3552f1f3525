"""`TrainConfig.compile`: the torch.compile'd training step computes what the eager one does.

The nets are compiled with the ``aot_eager`` backend: TorchDynamo captures our wrapped nets (the frozen
discriminators of the generator step included) and AOTAutograd splits their forward and backward graphs,
as with Inductor, but the graphs then run on eager kernels. That checks the semantics of compiling our
step in seconds; Inductor's generated kernels (and compile modes other than "default") are not covered
here: the GPU suite's ``train_step --compile`` runs them.
"""

from __future__ import annotations

import pytest
import torch

from cyclegan_core.config import ModelConfig, TrainConfig
from cyclegan_core.training.model import CycleGAN
from cyclegan_core.training.rng import seed_everything

MODEL = ModelConfig(generator="resnet_6blocks", discriminator="n_layers", n_layers_d=2, ngf=4, ndf=4)


def two_steps(compile_nets: bool) -> tuple[list[dict[str, float]], CycleGAN]:
    seed_everything(0)
    model = CycleGAN(MODEL, TrainConfig(compile=compile_nets, pool_size=2, seed=0, precision="fp32"))
    generator = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(2):
        real_A = torch.rand(2, 3, 16, 16, generator=generator) * 2 - 1
        real_B = torch.rand(2, 3, 16, 16, generator=generator) * 2 - 1
        losses.append(model.train_step(real_A, real_B))
    return losses, model


def test_compiled_step_matches_the_eager_step(monkeypatch: pytest.MonkeyPatch) -> None:
    compile_ = torch.compile
    compiled_nets: list[torch.nn.Module] = []

    def aot_eager_compile(module: torch.nn.Module, *, mode: str) -> torch.nn.Module:
        assert mode == "default"
        compiled_nets.append(module)
        return compile_(module, backend="aot_eager", mode=mode)

    monkeypatch.setattr(torch, "compile", aot_eager_compile)
    eager_losses, eager = two_steps(compile_nets=False)
    compiled_losses, compiled = two_steps(compile_nets=True)
    assert len(compiled_nets) == 6, "four trained nets plus the two frozen discriminators"
    for eager_step, compiled_step in zip(eager_losses, compiled_losses, strict=True):
        assert compiled_step == pytest.approx(eager_step, rel=1e-4, abs=1e-5)
    # Compare what the trained nets compute, not raw weights: the conv biases right before an instance
    # norm get only rounding noise as gradient, which Adam turns into different (irrelevant) biases.
    probe = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        for name in ("G_AB", "G_BA", "D_A", "D_B"):
            torch.testing.assert_close(compiled.nets[name](probe), eager.nets[name](probe), rtol=1e-3, atol=1e-3,
                                       msg=lambda m, name=name: f"{name}: {m}")
