"""The demo summary's per-epoch evaluation curve."""

from __future__ import annotations

from pipelines.flows.demo import eval_curve


def test_the_eval_curve_has_a_line_per_evaluated_epoch_and_marks_the_registered_one() -> None:
    history = [{"epoch": 1.0, "eval_psnr_AtoB": 10.0, "eval_cycle_l1_A": 0.3}, {"epoch": 2.0},
               {"epoch": 3.0, "eval_psnr_AtoB": 14.0, "eval_cycle_l1_A": 0.2},
               {"epoch": 4.0, "eval_psnr_AtoB": 12.0, "eval_cycle_l1_A": 0.25}]
    lines = eval_curve(history, primary="psnr_AtoB", best_epoch=3)
    assert lines[1].startswith("Evaluation during training (psnr_AtoB")
    body = lines[2:]
    assert [line.split()[1] for line in body] == ["1", "3", "4"]
    assert body[0].count("#") == 1 and body[1].count("#") == 30 and 1 < body[2].count("#") < 30
    assert body[1].endswith("<- best, registered") and not body[2].endswith("registered")
    assert "cycle_l1_A 0.2000" in body[1]
    assert eval_curve([{"epoch": 1.0}], primary="psnr_AtoB", best_epoch=None) == []
