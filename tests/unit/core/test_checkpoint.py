"""Training-state checkpoints: bitwise-exact resume, atomic writes, clear errors for bad files."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from cyclegan_core.config import ModelConfig, TrainConfig
from cyclegan_core.training.checkpoint import (
    CheckpointError,
    atomic_torch_save,
    load_checkpoint,
    load_weights_file,
    read_checkpoint,
    save_checkpoint,
)
from cyclegan_core.training.model import CycleGAN

# dropout on: the step consumes the global torch RNG, so a resume that forgot it would diverge
RESUME_MODEL = ModelConfig(generator="resnet_6blocks", ngf=8, ndf=8, dropout=True)
RESUME_TRAIN = TrainConfig(pool_size=2, n_epochs=1, n_epochs_decay=2, seed=5)
SMALL_MODEL = ModelConfig(generator="resnet_6blocks", discriminator="n_layers", n_layers_d=2, ngf=4, ndf=4)


def make_batches(n: int, *, size: int = 32, batch: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(123)
    return [
        (
            torch.rand(batch, 3, size, size, generator=generator) * 2 - 1,
            torch.rand(batch, 3, size, size, generator=generator) * 2 - 1,
        )
        for _ in range(n)
    ]


def run(model: CycleGAN, plan: list[str], batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Execute 'step' / 'epoch' actions; steps consume the batches in order from model.step."""
    for action in plan:
        if action == "epoch":
            model.end_epoch()
        else:
            model.train_step(*batches[model.step])


def assert_same_training_state(a: CycleGAN, b: CycleGAN) -> None:
    for name in a.nets:
        for (key, x), (_, y) in zip(
            a.nets[name].state_dict().items(), b.nets[name].state_dict().items(), strict=True
        ):
            assert torch.equal(x, y), f"{name}.{key} differs"
    for opt_a, opt_b in ((a.optimizer_G, b.optimizer_G), (a.optimizer_D, b.optimizer_D)):
        for state_a, state_b in zip(opt_a.state.values(), opt_b.state.values(), strict=True):
            assert all(torch.equal(state_a[k], state_b[k]) for k in ("exp_avg", "exp_avg_sq", "step"))
    assert (a.step, a.epoch, a.learning_rate()) == (b.step, b.epoch, b.learning_rate())
    for pool in ("fake_A", "fake_B"):
        pa, pb = a.state_dict()["pools"][pool], b.state_dict()["pools"][pool]
        assert torch.equal(pa["images"], pb["images"]) and torch.equal(pa["rng_state"], pb["rng_state"])


PLAN = ["step", "step", "epoch", "step", "step"]


@pytest.mark.parametrize("split", [1, 3], ids=["save-before-epoch-boundary", "save-after-epoch-boundary"])
def test_resume_from_a_checkpoint_is_bitwise_exact(tmp_path, split: int) -> None:
    batches = make_batches(4)
    straight = CycleGAN(RESUME_MODEL, RESUME_TRAIN)
    run(straight, PLAN, batches)
    straight_rng = torch.get_rng_state()

    first = CycleGAN(RESUME_MODEL, RESUME_TRAIN)
    run(first, PLAN[:split], batches)
    path = save_checkpoint(first, tmp_path / "state.pt")
    del first
    resumed = CycleGAN(RESUME_MODEL, RESUME_TRAIN)
    torch.rand(1000), random.random(), np.random.rand()  # a fresh process would be in another RNG state
    load_checkpoint(resumed, path)
    run(resumed, PLAN[split:], batches)

    assert_same_training_state(straight, resumed)
    assert torch.equal(torch.get_rng_state(), straight_rng)
    assert resumed.epoch == 1 and resumed.step == 4
    assert resumed.learning_rate() == pytest.approx(RESUME_TRAIN.lr * 2 / 3)


def test_resume_restores_python_and_numpy_rng(tmp_path) -> None:
    model = CycleGAN(SMALL_MODEL, TrainConfig())
    random.seed(1), np.random.seed(2)
    path = save_checkpoint(model, tmp_path / "rng.pt")
    expected = (random.random(), float(np.random.rand()))
    random.seed(99), np.random.seed(99)
    load_checkpoint(CycleGAN(SMALL_MODEL, TrainConfig()), path)
    assert (random.random(), float(np.random.rand())) == expected


def test_save_is_atomic_and_replaces_the_previous_file(tmp_path) -> None:
    model = CycleGAN(SMALL_MODEL, TrainConfig())
    path = tmp_path / "ckpt" / "latest.pt"
    save_checkpoint(model, path)
    model.train_step(*make_batches(1, size=16, batch=1)[0])
    save_checkpoint(model, path)
    assert os.listdir(path.parent) == ["latest.pt"]  # no temporary files left behind
    assert read_checkpoint(path)["state"]["step"] == 1


def test_failed_write_leaves_the_old_checkpoint_and_no_temp_file(tmp_path) -> None:
    model = CycleGAN(SMALL_MODEL, TrainConfig())
    path = save_checkpoint(model, tmp_path / "latest.pt")
    before = path.read_bytes()
    with pytest.raises(AttributeError, match="Can't pickle local object"):
        atomic_torch_save({"bad": lambda: None}, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["latest.pt"]


def test_a_checkpoint_with_the_former_extra_dict_still_loads(tmp_path) -> None:
    model = CycleGAN(SMALL_MODEL, TrainConfig())
    model.train_step(*make_batches(1, size=16, batch=1)[0])
    payload = read_checkpoint(save_checkpoint(model, tmp_path / "old.pt"))
    atomic_torch_save({**payload, "extra": {"dataset_version": "v1", "epoch": 0}}, tmp_path / "old.pt")
    resumed = CycleGAN(SMALL_MODEL, TrainConfig())
    load_checkpoint(resumed, tmp_path / "old.pt")
    assert_same_training_state(model, resumed)
    assert set(read_checkpoint(save_checkpoint(resumed, tmp_path / "new.pt"))) == {"format", "version", "state"}


def test_a_checkpoint_carries_the_configs_it_was_trained_with(tmp_path) -> None:
    train = TrainConfig(lr=1e-3, gan_mode="hinge")
    state = read_checkpoint(save_checkpoint(CycleGAN(SMALL_MODEL, train), tmp_path / "c.pt"))["state"]
    assert ModelConfig(**state["model_config"]) == SMALL_MODEL
    assert TrainConfig(**state["train_config"]) == train


@pytest.fixture()
def saved(tmp_path):
    return save_checkpoint(CycleGAN(SMALL_MODEL, TrainConfig()), tmp_path / "good.pt")


def test_truncated_file_is_reported_as_corrupt(saved) -> None:
    data = saved.read_bytes()
    saved.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=f"{saved}.*corrupt or truncated"):
        load_checkpoint(CycleGAN(SMALL_MODEL, TrainConfig()), saved)


def test_random_bytes_are_reported(tmp_path) -> None:
    path = tmp_path / "noise.pt"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CheckpointError, match="noise.pt"):
        read_checkpoint(path)


def test_empty_and_missing_files_are_reported(tmp_path) -> None:
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.pt is empty"):
        read_checkpoint(tmp_path / "empty.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "absent.pt")


def test_a_plain_state_dict_is_not_a_training_checkpoint(tmp_path) -> None:
    path = tmp_path / "latest_net_G_A.pth"
    torch.save(CycleGAN(SMALL_MODEL, TrainConfig()).G_AB.state_dict(), path)
    with pytest.raises(CheckpointError, match="not a cyclegan_core training checkpoint"):
        read_checkpoint(path)


class NotAllowed:
    pass


def test_arbitrary_pickled_objects_are_refused(tmp_path) -> None:
    path = tmp_path / "pickled.pt"
    torch.save({"format": "cyclegan_core.checkpoint", "obj": NotAllowed()}, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        read_checkpoint(path)


class RunsACommand:
    def __reduce__(self):
        return os.system, ("echo should-never-run",)


@pytest.mark.parametrize("damage", ["truncated", "malicious"])
def test_a_bad_file_is_one_short_line_that_starts_with_its_name(saved, damage: str) -> None:
    """Ray and log viewers cut long messages: the file name comes first, torch's advice is left out."""
    if damage == "truncated":
        saved.write_bytes(saved.read_bytes()[:100])
    else:
        torch.save({"format": "cyclegan_core.checkpoint", "state": RunsACommand()}, saved)
    with pytest.raises(CheckpointError) as caught:
        read_checkpoint(saved)
    message = str(caught.value)
    assert message.startswith(f"checkpoint {saved} ") and "\n" not in message and len(message) < 400
    expected = "failed finding central directory" if damage == "truncated" else "GLOBAL posix.system"
    assert expected in message, message
    with pytest.raises(CheckpointError, match=f"^rank1 pools {saved} "):
        load_weights_file(saved, what="rank1 pools")


def test_another_architecture_names_the_differing_field(saved) -> None:
    other = CycleGAN(SMALL_MODEL.model_copy(update={"generator": "resnet_9blocks"}), TrainConfig())
    with pytest.raises(
        CheckpointError,
        match=f"{saved}.*generator: 'resnet_6blocks' in the checkpoint, 'resnet_9blocks' here",
    ):
        load_checkpoint(other, saved)


def test_missing_keys_are_named(saved) -> None:
    payload = read_checkpoint(saved)
    del payload["state"]["optimizers"]
    atomic_torch_save(payload, saved)
    with pytest.raises(CheckpointError, match=r"lacks the keys \['optimizers'\]"):
        load_checkpoint(CycleGAN(SMALL_MODEL, TrainConfig()), saved)


def test_a_network_missing_weights_is_named(saved) -> None:
    payload = read_checkpoint(saved)
    del payload["state"]["nets"]["D_B"]["model.0.weight"]
    atomic_torch_save(payload, saved)
    with pytest.raises(CheckpointError, match="(?s)network D_B.*Missing key.*model.0.weight"):
        load_checkpoint(CycleGAN(SMALL_MODEL, TrainConfig()), saved)


@pytest.mark.parametrize("policy", ["linear", "step", "cosine"])
# epochs without training steps: torch warns that the schedulers step before any optimizer step
@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before:UserWarning")
def test_resuming_with_a_longer_schedule_follows_the_new_schedule(tmp_path, policy: str) -> None:
    """A finished run (lr decayed to 0) resumed for more epochs must train at the new schedule's rate."""
    short = TrainConfig(lr_policy=policy, n_epochs=1, n_epochs_decay=1, lr_decay_iters=1)
    longer = TrainConfig(lr_policy=policy, n_epochs=3, n_epochs_decay=3, lr_decay_iters=3)
    finished = CycleGAN(SMALL_MODEL, short)
    finished.end_epoch()
    finished.end_epoch()
    save_checkpoint(finished, tmp_path / "finished.pt")
    resumed = CycleGAN(SMALL_MODEL, longer)
    load_checkpoint(resumed, tmp_path / "finished.pt")
    straight = CycleGAN(SMALL_MODEL, longer)
    straight.end_epoch()
    straight.end_epoch()
    assert resumed.epoch == 2
    assert resumed.learning_rate() == pytest.approx(straight.learning_rate())
    assert resumed.learning_rate() > 0
    resumed.end_epoch()
    straight.end_epoch()
    assert resumed.learning_rate() == pytest.approx(straight.learning_rate())
