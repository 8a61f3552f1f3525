"""cyclegan_core.evaluation.inception: the Inception-v3 feature extractor, its weights files and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchvision.models import inception as tv_inception

from cyclegan_core.evaluation.inception import (
    FEATURE_DIM,
    InceptionFeatureExtractor,
    InceptionWeightsError,
    _TFInceptionA,
    _TFInceptionE2,
    load_inception_state_dict,
)


def write_random_inception_weights(path: Path, *, aux_logits: bool = True, num_classes: int = 1000) -> Path:
    """A random-init torchvision Inception-v3 state dict, BatchNorm statistics set from one random batch.

    PyTorch's default init makes pool3 features vanish (~1e-8); calibrating BatchNorm on a batch keeps
    them O(1), so distances between feature sets are meaningful in tests.
    """
    torch.manual_seed(0)
    net = tv_inception.inception_v3(
        weights=None, aux_logits=aux_logits, init_weights=False, num_classes=num_classes
    )
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = 1.0
    aux, net.AuxLogits = net.AuxLogits, None  # the aux head needs 299 px inputs; it plays no part in features
    with torch.no_grad():
        net.train()(torch.rand(2, 3, 96, 96) * 2 - 1)
    net.AuxLogits = aux
    torch.save(net.state_dict(), path)
    return path


# --- paired metrics ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_inception_weights(tmp_path_factory.mktemp("inception") / "inception.pth")


def test_inception_features_have_2048_dims_and_are_deterministic(inception_weights: Path) -> None:
    images = torch.rand(2, 3, 40, 48, generator=torch.Generator().manual_seed(0)) * 2 - 1
    extractor = InceptionFeatureExtractor.from_weights(inception_weights)
    first = extractor(images)
    assert first.shape == (2, FEATURE_DIM) and first.dtype == torch.float32
    assert torch.isfinite(first).all() and (first[0] - first[1]).abs().mean() > 1e-3  # distinct images differ
    again = InceptionFeatureExtractor.from_weights(inception_weights)(images)
    assert torch.allclose(first, again, atol=1e-5)
    assert extractor.variant == "torchvision"


def test_state_dict_layouts_accepted(tmp_path: Path, inception_weights: Path) -> None:
    state = torch.load(inception_weights, weights_only=True)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, wrapped)
    assert load_inception_state_dict(wrapped).keys() == state.keys()
    no_aux = tmp_path / "no_aux.pth"
    torch.save({k: v for k, v in state.items() if not k.startswith("AuxLogits.")}, no_aux)
    assert InceptionFeatureExtractor.from_weights(no_aux).net.AuxLogits is None


def test_missing_weights_file_is_an_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pth"
    with pytest.raises(InceptionWeightsError, match="nope.pth: no such file"):
        InceptionFeatureExtractor.from_weights(missing)


def test_corrupt_weights_file_is_an_error_naming_it(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(InceptionWeightsError, match="corrupt.pth: not a readable PyTorch weights file"):
        InceptionFeatureExtractor.from_weights(corrupt)


def test_foreign_state_dict_is_an_error_naming_the_mismatch(tmp_path: Path, inception_weights: Path) -> None:
    state = torch.load(inception_weights, weights_only=True)
    del state["Mixed_7c.branch_pool.conv.weight"]
    partial = tmp_path / "partial.pth"
    torch.save(state, partial)
    with pytest.raises(InceptionWeightsError, match=r"partial.pth: .*missing keys \['Mixed_7c.branch_pool"):
        InceptionFeatureExtractor.from_weights(partial)
    other = tmp_path / "linear.pth"
    torch.save(torch.nn.Linear(3, 4).state_dict(), other)
    with pytest.raises(InceptionWeightsError, match="linear.pth: not an Inception-v3 state dict"):
        InceptionFeatureExtractor.from_weights(other)


def test_tf_fid_weights_get_the_tf_graph_blocks(tmp_path: Path, inception_weights: Path) -> None:
    state = {
        k: v
        for k, v in torch.load(inception_weights, weights_only=True).items()
        if not k.startswith("AuxLogits.")
    }
    state["fc.weight"], state["fc.bias"] = (
        torch.zeros(1008, FEATURE_DIM),
        torch.zeros(1008),
    )  # pytorch-fid's head
    weights = tmp_path / "pt_inception.pth"
    torch.save(state, weights)
    net = InceptionFeatureExtractor.from_weights(weights).net
    assert isinstance(net.Mixed_5b, _TFInceptionA) and isinstance(net.Mixed_7c, _TFInceptionE2)
    assert type(net.Mixed_6a) is tv_inception.InceptionB  # blocks without a pool branch are unchanged


def test_tf_blocks_differ_from_torchvision_only_in_their_pool_branch() -> None:
    torch.manual_seed(0)
    x = torch.rand(1, 8, 6, 6)
    for tf_block, tv_block, pool in (
        (
            _TFInceptionA(8, pool_features=4),
            tv_inception.InceptionA(8, pool_features=4),
            lambda t: F.avg_pool2d(t, 3, stride=1, padding=1, count_include_pad=False),
        ),
        (_TFInceptionE2(8), tv_inception.InceptionE(8), lambda t: F.max_pool2d(t, 3, stride=1, padding=1)),
    ):
        tf_block.eval()
        tv_block.eval().load_state_dict(tf_block.state_dict())
        with torch.no_grad():
            ours, theirs = tf_block(x), tv_block(x)
            expected_pool = tf_block.branch_pool(pool(x))
        width = expected_pool.shape[1]
        assert torch.equal(ours[:, :-width], theirs[:, :-width])
        assert torch.allclose(ours[:, -width:], expected_pool)
        assert not torch.allclose(ours[:, -width:], theirs[:, -width:])
