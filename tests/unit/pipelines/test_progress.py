"""What the driver makes of each epoch's report: the progress line, the percentage, the listeners."""

from __future__ import annotations

import logging

import pytest

from pipelines.train.progress import (
    epoch_listener,
    format_duration,
    format_epoch_line,
    log_item,
    progress_percent,
)

EPOCH = {"epoch": 2.0, "total_epochs": 5.0, "step": 24.0, "loss_G_A": 0.71234, "loss_D_A": 0.25,
         "lr": 2e-4, "images_per_s": 12.5, "epoch_seconds": 90.0, "partial_epoch": 0.0}


def test_the_epoch_line_shows_progress_losses_speed_and_eta():
    assert format_epoch_line(EPOCH) == (
        "epoch 2/5 step 24 D_A=0.250 G_A=0.712 lr=2.00e-04 12.5 img/s (90.0s) ETA 4m30s")


def test_the_epoch_line_shows_the_eval_metric_of_an_evaluated_epoch():
    line = format_epoch_line({**EPOCH, "eval_psnr_AtoB": 18.2345, "eval_fid_AtoB": 71.03})
    assert " G_A=0.712 fid_AtoB=71.03 psnr_AtoB=18.23 lr=" in line


def test_the_last_or_a_cut_short_epoch_has_no_eta():
    assert format_epoch_line({**EPOCH, "epoch": 5.0}).endswith("(90.0s)")
    cut = format_epoch_line({**EPOCH, "epoch": 2.5, "partial_epoch": 1.0})
    assert cut.endswith("(90.0s) (stopped at max_steps)")


def test_durations_read_as_hours_minutes_seconds():
    assert [format_duration(s) for s in (0.4, 42, 185, 3720, 90061)] == ["0s", "42s", "3m05s", "1h02m", "25h01m"]


def test_progress_is_the_share_of_epochs_done():
    assert progress_percent(EPOCH) == 40.0
    assert progress_percent({"epoch": 1.0, "total_epochs": 3.0}) == 33.33
    assert progress_percent({"epoch": 6.0, "total_epochs": 5.0}) == 100.0


def test_listeners_get_each_epoch_while_registered_and_a_failing_one_does_not_stop_training(caplog):
    seen: list[float] = []

    def broken(metrics: dict[str, float]) -> None:
        raise RuntimeError("artifact API down")

    report = {"kind": "epoch", "metrics": EPOCH, "checkpoint": "bucket/runs/run/checkpoint_epoch0002_step00000024"}
    checkpoints: list[tuple[str, float]] = []
    with caplog.at_level(logging.INFO, logger="pipelines.train.progress"):
        with epoch_listener(broken), epoch_listener(lambda metrics: seen.append(metrics["epoch"])):
            log_item(report, lambda path, metrics: checkpoints.append((path, metrics["epoch"])))
        log_item(report)
        log_item({**report, "checkpoint": None}, lambda path, metrics: checkpoints.append((path, 0.0)))
    assert seen == [2.0]
    assert checkpoints == [("bucket/runs/run/checkpoint_epoch0002_step00000024", 2.0)]  # reported checkpoints only
    assert any(r.getMessage().startswith("epoch 2/5") and r.getMessage().endswith("[checkpoint]")
               for r in caplog.records)
    assert any("epoch listener" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_a_listener_is_removed_when_its_block_raises():
    seen: list[float] = []
    with pytest.raises(ValueError), epoch_listener(lambda metrics: seen.append(metrics["epoch"])):
        raise ValueError("training failed")
    log_item({"kind": "epoch", "metrics": EPOCH, "checkpoint": None})
    assert seen == []
