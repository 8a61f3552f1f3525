"""CycleGAN training object: the step's losses, order, options, schedules and in-memory state round trip."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from cyclegan_core.config import ModelConfig, TrainConfig
from cyclegan_core.training.losses import GANLoss
from cyclegan_core.training.model import GP_KEYS, LOSS_KEYS, CycleGAN

# 16x16 images: a 2-layer PatchGAN still has 2x2 patches to instance-normalise (the 3-layer one needs 32x32)
TINY = ModelConfig(generator="resnet_6blocks", discriminator="n_layers", n_layers_d=2, ngf=8, ndf=8)


def batches(
    n: int, *, size: int = 16, batch: int = 1, seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (
            torch.rand(batch, 3, size, size, generator=generator) * 2 - 1,
            torch.rand(batch, 3, size, size, generator=generator) * 2 - 1,
        )
        for _ in range(n)
    ]


def test_net_mapping_follows_the_official_naming() -> None:
    model = CycleGAN(
        TINY.model_copy(update={"input_nc": 1, "output_nc": 3}), TrainConfig(lambda_identity=0.0)
    )
    # G_AB: A (1 channel) -> B (3 channels); D_A judges B images, D_B judges A images
    assert model.G_AB(torch.zeros(1, 1, 16, 16)).shape[1] == 3
    assert model.G_BA(torch.zeros(1, 3, 16, 16)).shape[1] == 1
    assert model.D_A(torch.zeros(1, 3, 32, 32)).shape[1] == 1
    assert model.D_B(torch.zeros(1, 1, 32, 32)).shape[1] == 1
    losses = model.train_step(torch.rand(1, 1, 16, 16), torch.rand(1, 3, 16, 16))
    assert losses["idt_A"] == losses["idt_B"] == 0.0


def test_train_step_returns_every_loss_as_a_finite_float_and_counts_steps() -> None:
    model = CycleGAN(TINY, TrainConfig())
    for real_A, real_B in batches(2):
        losses = model.train_step(real_A, real_B)
    assert list(losses) == list(LOSS_KEYS)
    assert all(isinstance(v, float) and math.isfinite(v) for v in losses.values())
    assert model.step == 2 and model.epoch == 0


def test_identity_weights_are_lambda_identity_times_the_other_domains_lambda() -> None:
    # one step from the same seed: only lambda_B changes; idt_A (= G_AB(B) vs B) scales with lambda_B
    def first_losses(lambda_B: float) -> dict[str, float]:
        model = CycleGAN(TINY, TrainConfig(lambda_A=10.0, lambda_B=lambda_B, lambda_identity=0.5))
        return model.train_step(*batches(1)[0])

    base, doubled = first_losses(10.0), first_losses(20.0)
    assert doubled["idt_A"] == pytest.approx(2 * base["idt_A"], rel=1e-5)
    assert doubled["idt_B"] == pytest.approx(base["idt_B"], rel=1e-5)
    assert doubled["cycle_B"] == pytest.approx(2 * base["cycle_B"], rel=1e-5)
    assert doubled["cycle_A"] == pytest.approx(base["cycle_A"], rel=1e-5)


def test_generator_step_leaves_discriminators_trainable_and_only_the_d_step_moves_them() -> None:
    model = CycleGAN(TINY, TrainConfig(lr=1e-3))
    before = {name: [p.detach().clone() for p in net.parameters()] for name, net in model.nets.items()}
    model.train_step(*batches(1)[0])
    for name, net in model.nets.items():
        assert all(p.requires_grad for p in net.parameters()), name
        assert any(not torch.equal(a, b) for a, b in zip(before[name], net.parameters(), strict=True)), name


def test_a_few_steps_reduce_the_cycle_loss_on_a_trivial_problem() -> None:
    # smooth gradients in both domains: learnable by a tiny ResNet within a dozen steps
    y, x = torch.meshgrid(torch.linspace(-1, 1, 16), torch.linspace(-1, 1, 16), indexing="ij")
    real_A = torch.stack([x, y, x * y]).unsqueeze(0) * 0.8
    real_B = torch.stack([y, -x, 0.5 * x]).unsqueeze(0) * 0.8
    model = CycleGAN(TINY, TrainConfig(lr=5e-3, pool_size=0, lambda_identity=0.0))
    history = [model.train_step(real_A, real_B) for _ in range(12)]
    first = history[0]["cycle_A"] + history[0]["cycle_B"]
    last = history[-1]["cycle_A"] + history[-1]["cycle_B"]
    assert last < 0.6 * first


def test_wgangp_returns_weighted_gradient_penalties_included_in_the_d_losses() -> None:
    model = CycleGAN(TINY, TrainConfig(gan_mode="wgangp", lambda_gp=10.0))
    losses = model.train_step(*batches(1)[0])
    assert list(losses) == list(LOSS_KEYS) + list(GP_KEYS)
    assert losses["gp_A"] > 0 and losses["gp_B"] > 0
    no_gp = CycleGAN(TINY, TrainConfig(gan_mode="wgangp", lambda_gp=0.0)).train_step(*batches(1)[0])
    assert no_gp["gp_A"] == no_gp["gp_B"] == 0.0
    # same seed, same first step: the D loss differs by exactly the penalty
    assert losses["D_A"] - losses["gp_A"] == pytest.approx(no_gp["D_A"], rel=1e-4, abs=1e-5)


def expected_first_step_losses(model: CycleGAN, real_A: torch.Tensor, real_B: torch.Tensor) -> dict[str, float]:
    """G_A, cycle_A and D_A of the coming step, from copies of the nets taken before it, each network
    called on one batch at a time as the official ``optimize_parameters`` does (pool_size=0)."""
    G_AB, G_BA, D_A = (copy.deepcopy(net) for net in (model.G_AB, model.G_BA, model.D_A))
    gan = GANLoss(model.train_cfg.gan_mode)
    with torch.no_grad():
        fake_B = G_AB(real_A)
        rec_A = G_BA(fake_B)
        return {
            "G_A": float(gan(D_A(fake_B), True, for_discriminator=False)),
            "cycle_A": float(model.train_cfg.lambda_A * (rec_A - real_A).abs().mean()),
            "D_A": float(0.5 * (gan(D_A(real_B), True) + gan(D_A(fake_B), False))),
        }


@pytest.mark.parametrize("norm", ["instance", "batch"])
@pytest.mark.parametrize("gan_mode", ["lsgan", "vanilla", "hinge"])
def test_the_step_reports_the_official_losses_of_its_gan_mode_and_norm(gan_mode: str, norm: str) -> None:
    # Instance norm batches independent generator calls together, batch norm keeps them apart (its
    # statistics would mix the batches): either way the losses are those of separate official calls.
    model = CycleGAN(TINY.model_copy(update={"norm": norm}),
                     TrainConfig(gan_mode=gan_mode, pool_size=0, precision="fp32"))
    real_A, real_B = batches(1, batch=2)[0]
    expected = expected_first_step_losses(model, real_A, real_B)
    losses = model.train_step(real_A, real_B)
    assert {key: losses[key] for key in expected} == pytest.approx(expected, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_step_keeps_fp32_weights(precision: str) -> None:
    model = CycleGAN(TINY, TrainConfig(precision=precision))
    losses = model.train_step(*batches(1)[0])
    assert all(math.isfinite(v) for v in losses.values())
    assert all(p.dtype == torch.float32 for net in model.nets.values() for p in net.parameters())
    assert model.scaler.is_enabled() == (precision == "fp16")


def test_auto_precision_on_cpu_is_what_the_entry_measured_and_fp32_without_a_measurement() -> None:
    assert CycleGAN(TINY, TrainConfig(precision="auto")).precision == "fp32"
    assert CycleGAN(TINY, TrainConfig(precision="auto"), cpu_auto="bf16").precision == "bf16"
    assert CycleGAN(TINY, TrainConfig(precision="fp32"), cpu_auto="bf16").precision == "fp32"


def test_cpu_training_is_channels_last_in_bf16_and_nchw_in_fp32() -> None:
    bf16, fp32 = (CycleGAN(TINY, TrainConfig(precision=p)) for p in ("bf16", "fp32"))
    assert bf16.channels_last and not fp32.channels_last
    assert bf16.G_AB.model[1].weight.is_contiguous(memory_format=torch.channels_last)
    assert fp32.G_AB.model[1].weight.is_contiguous()


def test_end_epoch_steps_the_linear_schedule_for_both_optimizers() -> None:
    model = CycleGAN(TINY, TrainConfig(lr=1.0, n_epochs=1, n_epochs_decay=3))
    lrs = []
    for _ in range(4):
        lrs.append(model.learning_rate())
        model.train_step(*batches(1)[0])
        model.end_epoch()
    assert lrs == pytest.approx([1.0, 0.75, 0.5, 0.25])
    assert model.optimizer_D.param_groups[0]["lr"] == pytest.approx(0.0)
    assert model.epoch == 4


def test_same_seed_gives_identical_initial_weights() -> None:
    first, second = CycleGAN(TINY, TrainConfig(seed=3)), CycleGAN(TINY, TrainConfig(seed=3))
    other = CycleGAN(TINY, TrainConfig(seed=4))
    for name in first.nets:
        assert all(
            torch.equal(a, b)
            for a, b in zip(first.nets[name].parameters(), second.nets[name].parameters(), strict=True)
        )
    assert not torch.equal(next(first.G_AB.parameters()), next(other.G_AB.parameters()))


def test_inputs_of_the_wrong_shape_are_rejected_with_the_reason() -> None:
    model = CycleGAN(TINY, TrainConfig())
    with pytest.raises(ValueError, match="multiples of 4"):
        model.train_step(torch.rand(1, 3, 18, 18), torch.rand(1, 3, 18, 18))
    with pytest.raises(ValueError, match="real_B must be an N x 3"):
        model.train_step(torch.rand(1, 3, 16, 16), torch.rand(1, 1, 16, 16))


def test_identity_loss_with_different_channel_counts_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="lambda_identity=0"):
        CycleGAN(ModelConfig(input_nc=1, output_nc=3, ngf=4, ndf=4), TrainConfig(lambda_identity=0.5))


def test_state_dict_has_everything_and_plain_net_keys() -> None:
    model = CycleGAN(TINY, TrainConfig(pool_size=3))
    model.train_step(*batches(1)[0])
    state = model.state_dict()
    assert set(state["nets"]) == {"G_AB", "G_BA", "D_A", "D_B"}
    assert not any(key.startswith("module.") for net in state["nets"].values() for key in net)
    assert state["pools"]["fake_A"]["num_images"] == 1
    assert set(state["rng"]) >= {"torch", "python", "numpy"}
    assert state["model_config"] == TINY.model_dump(mode="json")
    assert state["step"] == 1


def test_load_state_dict_names_the_differing_architecture_field() -> None:
    state = CycleGAN(TINY, TrainConfig()).state_dict()
    other = CycleGAN(TINY.model_copy(update={"ngf": 4}), TrainConfig())
    with pytest.raises(ValueError, match="ngf: 8 in the checkpoint, 4 here"):
        other.load_state_dict(state)


def test_compile_uses_the_configured_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    modes: list[str] = []

    def fake_compile(module: torch.nn.Module, *, mode: str) -> torch.nn.Module:
        modes.append(mode)
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    CycleGAN(TINY, TrainConfig(compile=True, compile_mode="reduce-overhead"))
    assert modes == ["reduce-overhead"] * 6, "four trained nets plus the two frozen discriminators"
    modes.clear()
    CycleGAN(TINY, TrainConfig())
    assert modes == [], "compile is off by default"
