"""CycleGAN under DistributedDataParallel: 2 gloo processes on different data end with identical weights.

The model wraps its networks in DDP itself when ``torch.distributed`` is initialised; this checks the
GAN-specific pitfalls (frozen discriminators called unwrapped in the generator step, generators called
several times per step, detached fakes, the gradient penalty's double backward) by comparing all four
networks across ranks, and against one process training on the concatenated batch.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cyclegan_core.config import ModelConfig, TrainConfig
from cyclegan_core.training.model import CycleGAN

WORLD_SIZE = 2
STEPS = 2
MODEL = ModelConfig(generator="resnet_6blocks", discriminator="n_layers", n_layers_d=2, ngf=4, ndf=4)
# pool_size=0: the single-process reference sees exactly the fakes each rank sees; fp32 on any CPU
PLAIN = TrainConfig(pool_size=0, lr=2e-3, precision="fp32")
# wgangp (double backward through a DDP module) with per-rank pools
WGANGP = TrainConfig(pool_size=2, gan_mode="wgangp", lr=2e-3, precision="fp32")


def global_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(7)
    return [
        (
            torch.rand(WORLD_SIZE, 3, 16, 16, generator=generator) * 2 - 1,
            torch.rand(WORLD_SIZE, 3, 16, 16, generator=generator) * 2 - 1,
        )
        for _ in range(STEPS)
    ]


def train(train_cfg: TrainConfig, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, dict]:
    model = CycleGAN(MODEL, train_cfg)
    for real_A, real_B in batches:
        model.train_step(real_A, real_B)
    return model.state_dict()["nets"]


def worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)
    try:
        shards = [
            (a[rank : rank + 1], b[rank : rank + 1]) for a, b in global_batches()
        ]  # different data per rank
        nets = {"plain": train(PLAIN, shards), "wgangp": train(WGANGP, shards)}
        torch.save(nets, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def rank_nets(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, dict]]:
    out_dir = tmp_path_factory.mktemp("ddp")
    mp.spawn(worker, args=(str(out_dir / "init"), str(out_dir)), nprocs=WORLD_SIZE, join=True)
    return [torch.load(out_dir / f"rank{rank}.pt", weights_only=True) for rank in range(WORLD_SIZE)]


@pytest.mark.parametrize("run", ["plain", "wgangp"])
def test_all_ranks_hold_identical_weights_for_all_four_nets(rank_nets, run: str) -> None:
    first, second = rank_nets[0][run], rank_nets[1][run]
    assert set(first) == {"G_AB", "G_BA", "D_A", "D_B"}
    for name in first:
        assert not any(key.startswith("module.") for key in first[name])
        for key in first[name]:
            assert torch.equal(first[name][key], second[name][key]), (
                f"{run}: {name}.{key} differs across ranks"
            )


def outputs(nets: dict[str, dict]) -> dict[str, torch.Tensor]:
    """Each network's output on a fixed probe batch, from the given weights."""
    model = CycleGAN(MODEL, PLAIN)
    probe = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    results = {}
    with torch.no_grad():
        for name, module in model.nets.items():
            module.load_state_dict(nets[name])
            results[name] = module(probe)
    return results


def test_ranks_trained_on_different_data_match_one_process_on_the_whole_batch(rank_nets) -> None:
    # Compared by outputs: weights with no effect on them (a conv bias before instance norm) get pure
    # rounding-noise gradients, which Adam's normalisation turns into lr-sized, run-dependent updates.
    initial = outputs(CycleGAN(MODEL, PLAIN).state_dict()["nets"])
    reference = outputs(train(PLAIN, global_batches()))
    distributed = outputs(rank_nets[0]["plain"])
    for name, expected in reference.items():
        moved = (expected - initial[name]).abs().max().item()
        diff = (distributed[name] - expected).abs().max().item()
        # a missing gradient average would be off by about as much as training moved the output
        assert diff <= 0.05 * moved, f"{name}: off by {diff:.2e} while training moved it {moved:.2e}"


def test_a_group_of_one_is_not_wrapped_in_ddp(tmp_path: Path) -> None:
    """One Ray Train worker still gets a process group; with nothing to average, DDP is skipped."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        model = CycleGAN(MODEL, PLAIN)
        assert (model.distributed, model.rank, model.world_size) == (False, 0, 1)
        assert all(model._train_nets[name] is net for name, net in model.nets.items())
        real_A, real_B = global_batches()[0]
        assert model.train_step(real_A, real_B)["D_A"] > 0
    finally:
        dist.destroy_process_group()
