"""``auto`` from a given timing table (the fastest path within 40 dB of fp32, within what was fixed) and its
decision file: reused, measured again when corrupt, never reused for another CPU, thread count or version."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from cyclegan_core.inference.backends import check_choice
from cyclegan_core.inference.backends.decision import (
    Measurement,
    NoCandidate,
    choose,
    decide,
    decision_path,
    explain,
)
from cyclegan_core.inference.backends.host import HostIdentity, this_host

# the 256² figures on an AVX512-BF16 EPYC, as a timing table
TABLE = [Measurement(backend="torch", precision="fp32", ms=265.0),
         Measurement(backend="torch", precision="bf16", ms=132.0, psnr_db=45.3),
         Measurement(backend="openvino", precision="fp32", ms=219.0, psnr_db=95.0),
         Measurement(backend="openvino", precision="bf16", ms=106.0, psnr_db=46.2)]
HOST = HostIdentity(cpu="AMD EPYC", cpu_flags="0123456789abcdef", machine="x86_64", threads=2, torch="2.14.1",
                    openvino="2026.4.1")
ARCH = {"generator": "resnet_9blocks", "ngf": 64, "norm": "instance", "input_nc": 3, "output_nc": 3}


def test_auto_takes_the_fastest_path_within_40_db_of_fp32() -> None:
    assert choose(TABLE).label == "openvino bf16"


def test_a_faster_path_outside_the_quality_bound_is_passed_over() -> None:
    lossy = [*TABLE, Measurement(backend="openvino", precision="bf16", ms=50.0, psnr_db=39.9)]
    assert choose(lossy[:3] + lossy[4:]).label == "torch bf16"


def test_a_lead_inside_the_probes_noise_keeps_the_exact_computation() -> None:
    close = [TABLE[0], Measurement(backend="torch", precision="bf16", ms=255.0, psnr_db=45.3)]  # 4% faster
    assert choose(close).label == "torch fp32"
    assert choose([*close, Measurement(backend="openvino", precision="bf16", ms=240.0, psnr_db=46.0)]).label == \
        "openvino bf16"  # 10.4% faster


def test_fixing_the_backend_or_the_precision_chooses_within_it() -> None:
    assert choose(TABLE, backend="torch").label == "torch bf16"
    assert choose(TABLE, precision="fp32").label == "openvino fp32"
    assert choose(TABLE, backend="torch", bound_db=50).label == "torch fp32"  # fp32 itself is always within


def test_no_candidate_names_what_was_measured() -> None:
    with pytest.raises(NoCandidate, match=r"backend openvino.*torch fp32 265 ms"):
        choose(TABLE[:2], backend="openvino")


def test_the_reason_is_one_line_naming_the_choice_host_and_timings() -> None:
    from cyclegan_core.inference.backends.decision import Decision

    decision = Decision(kind="translate", host=HOST, architecture=ARCH, probe="256x256", measured_at="now",
                        measurements=TABLE)
    line = explain(choose(TABLE), decision, "measured now")
    assert "\n" not in line and "AMD EPYC, 2 thread(s)" in line
    assert line.index("openvino bf16 106 ms 46.2 dB") < line.index("torch fp32 265 ms")  # fastest first


@pytest.mark.parametrize(("backend", "precision", "message"), [
    ("onnxruntime", "auto", "backend must be one of auto, torch, openvino, got 'onnxruntime'"),
    ("auto", "int4", "precision must be one of auto, fp32, bf16, fp16, int8, got 'int4'"),
    ("torch", "int8", "backend torch computes fp32, bf16, fp16, not int8; int8 needs backend openvino"),
    ("openvino", "fp16", "backend openvino computes fp32, bf16, int8, not fp16; fp16 needs backend torch"),
])
def test_unknown_or_impossible_choices_name_the_choices(backend: str, precision: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_choice(backend, precision)


class Probe:
    """A measurement that counts its runs (the real probe times the generator: test_openvino.py)."""

    def __init__(self) -> None:
        self.runs = 0

    def __call__(self) -> list[Measurement]:
        self.runs += 1
        return list(TABLE)


def decide_with(cache: Path | None, probe: Probe, host: HostIdentity = HOST, arch: dict | None = None):
    return decide(cache, kind="translate", host=host, architecture=arch or ARCH, probe="256x256", measure=probe)


def test_the_decision_is_measured_once_and_reused(tmp_path: Path) -> None:
    probe = Probe()
    first, first_source = decide_with(tmp_path, probe)
    second, second_source = decide_with(tmp_path, probe)
    assert probe.runs == 1 and first == second
    assert first_source.startswith("measured now, kept in") and second_source.startswith("measured ")
    assert "read from" in second_source
    assert [p.name for p in (tmp_path / "decisions").glob("*.json")] == [decision_path(tmp_path, "translate", HOST,
                                                                                          ARCH).name]


@pytest.mark.parametrize("damage", ["truncated", "not json", "wrong schema"])
def test_a_corrupt_decision_file_is_measured_again_and_rewritten(tmp_path: Path, damage: str,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    probe = Probe()
    decide_with(tmp_path, probe)
    path = decision_path(tmp_path, "translate", HOST, ARCH)
    text = path.read_text()
    path.write_text({"truncated": text[: len(text) // 2], "not json": "\x00\x01",
                     "wrong schema": json.dumps({"format": "cyclegan-auto-decision", "measurements": 3})}[damage])
    with caplog.at_level(logging.WARNING):
        _, source = decide_with(tmp_path, probe)
    assert probe.runs == 2 and source.startswith("measured now")
    assert any("corrupt" in record.getMessage() for record in caplog.records)
    assert json.loads(path.read_text())["measurements"][0]["backend"] == "torch"  # rewritten whole


@pytest.mark.parametrize("change", [{"cpu": "Intel Xeon"}, {"cpu_flags": "fedcba9876543210"}, {"threads": 1},
                                    {"openvino": "2027.0"}, {"torch": "2.15.0"}])
def test_a_decision_is_not_reused_on_another_cpu_thread_count_or_version(tmp_path: Path, change: dict) -> None:
    probe = Probe()
    decide_with(tmp_path, probe)
    other = HOST.model_copy(update=change)
    decision, _ = decide_with(tmp_path, probe, host=other)
    assert probe.runs == 2 and decision.host == other
    assert len(list((tmp_path / "decisions").glob("*.json"))) == 2


def test_a_decision_file_copied_from_another_cpu_is_not_trusted(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    probe = Probe()
    other = HOST.model_copy(update={"cpu": "Intel Xeon Platinum 8480+"})
    decide_with(tmp_path, probe, host=other)
    # the other CPU's file put where this host's would be (a shared home, a copied cache)
    decision_path(tmp_path, "translate", other, ARCH).rename(decision_path(tmp_path, "translate", HOST, ARCH))
    with caplog.at_level(logging.WARNING):
        decision, _ = decide_with(tmp_path, probe)
    assert probe.runs == 2 and decision.host == HOST
    assert any("another host" in record.getMessage() for record in caplog.records)


def test_another_architecture_is_measured_for_itself(tmp_path: Path) -> None:
    probe = Probe()
    decide_with(tmp_path, probe)
    decide_with(tmp_path, probe, arch={**ARCH, "ngf": 32})
    assert probe.runs == 2


def test_without_a_writable_cache_the_decision_is_measured_and_not_kept(tmp_path: Path) -> None:
    probe = Probe()
    (tmp_path / "file").write_text("a file where the cache folder would be")
    _, source = decide_with(tmp_path / "file" / "cache", probe)
    _, no_cache = decide_with(None, probe)
    assert probe.runs == 2 and "not kept" in source and "not kept" in no_cache


def test_this_hosts_identity_follows_the_thread_count() -> None:
    assert this_host(threads=1).threads == 1 and this_host(threads=3) != this_host(threads=1)
    assert this_host().cpu and len(this_host().cpu_flags) == 16


def test_on_cuda_auto_is_torch_bf16_without_measuring_and_openvino_is_refused(tmp_path: Path) -> None:
    import torch

    from cyclegan_core.config import ModelConfig
    from cyclegan_core.inference.backends import with_backend
    from cyclegan_core.inference.translator import Translator
    from cyclegan_core.networks import build_generator

    def on_cuda() -> Translator:  # the branch only reads the device (no GPU here)
        translator = Translator(build_generator("resnet_6blocks", ngf=4), None,
                                ModelConfig(generator="resnet_6blocks", ngf=4))
        translator.device = torch.device("cuda")
        return translator

    chosen = with_backend(on_cuda(), cache_dir=tmp_path)
    assert chosen.describe() == "torch bf16 (auto on cuda: bf16 autocast)"
    assert not (tmp_path / "decisions").exists()
    for backend, precision in (("openvino", "auto"), ("auto", "int8")):
        with pytest.raises(ValueError, match="backend openvino runs on the CPU"):
            with_backend(on_cuda(), backend=backend, precision=precision, cache_dir=tmp_path)


def test_a_translate_probe_counts_its_worst_scene() -> None:
    """bf16's error depends on the content: the PSNR a candidate gets is its worst over the probe scenes."""
    import torch

    from cyclegan_core.inference.backends.probe import QUALITY_SCENES, measurements, probe_inputs

    scenes = probe_inputs(3, 64)
    assert len(scenes) == QUALITY_SCENES and all(s.shape == (1, 3, 64, 64) for s in scenes)
    assert all(not torch.equal(scenes[0], other) for other in scenes[1:]), "different scenes"
    reference = [torch.zeros(1, 3, 8, 8) for _ in range(3)]
    close, off = torch.full((1, 3, 8, 8), 0.002), torch.full((1, 3, 8, 8), 0.02)  # 60 dB, 40 dB
    outputs = {("torch", "fp32"): reference, ("openvino", "bf16"): [close, off, close]}
    by_label = {m.label: m for m in measurements(outputs, {name: 0.1 for name in outputs}, ("torch", "fp32"))}
    assert by_label["torch fp32"].psnr_db is None
    assert by_label["openvino bf16"].psnr_db == 40.0


def test_translation_keeps_an_allowance_for_images_larger_than_the_probe(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A path 41 dB from fp32 on the 256² probe drops below 40 dB on 1024² images (about 1.5 dB per doubling
    of the side): translation's auto asks the probe for 43 dB and keeps fp32 here; training's bound is 40."""
    from cyclegan_core.config import ModelConfig
    from cyclegan_core.inference.backends import loading
    from cyclegan_core.inference.translator import Translator
    from cyclegan_core.networks import generator_from_config

    marginal = [TABLE[0], Measurement(backend="torch", precision="bf16", ms=120.0, psnr_db=41.5),
                Measurement(backend="openvino", precision="bf16", ms=100.0, psnr_db=41.0)]
    monkeypatch.setattr(loading, "translate_candidates", lambda *args, **kwargs: list(marginal))
    config = ModelConfig(generator="resnet_6blocks", ngf=4)
    chosen = loading.with_backend(Translator(generator_from_config(config), None, config), cache_dir=tmp_path)
    assert isinstance(chosen, Translator) and chosen.precision == "fp32"
    assert "within 43 dB of fp32" in chosen.reason and "40 dB at 4x the side" in chosen.reason
    assert choose(marginal).label == "openvino bf16"  # the 40 dB bound (training's) would take it
