"""The translate-cyclegan flow's pure parts: the rollout deployment, what a deployment run refuses, the
summary artifact."""

from __future__ import annotations

from pathlib import Path

import yaml

from pipelines.batch import BatchResult
from pipelines.batch.artifacts import summary_markdown
from pipelines.batch.job import QuarantinedInput
from pipelines.flows.translate import model_lookup_problem


def test_prefect_yaml_deploys_the_rollout_one_run_at_a_time():
    spec = yaml.safe_load((Path(__file__).resolve().parents[3] / "prefect.yaml").read_text())
    rollout = next(d for d in spec["deployments"] if d["name"] == "rollout")
    assert rollout["entrypoint"] == "pipelines/flows/translate.py:translate_cyclegan"
    assert rollout["concurrency_limit"] == 1 and rollout["work_pool"]["name"] == "cyclegan-pool"
    assert rollout["parameters"] == {"input_uri": "s3://cyclegan-images/in", "output_uri": "s3://cyclegan-images/out",
                                     "direction": "AtoB"}


def test_a_deployment_run_of_a_registry_model_needs_a_tracking_server():
    assert "MLFLOW_TRACKING_URI" in model_lookup_problem("rollout", "models:/cyclegan@champion", {})
    assert model_lookup_problem("rollout", "models:/cyclegan@champion", {"MLFLOW_TRACKING_URI": "http://m"}) == ""
    assert model_lookup_problem(None, "models:/cyclegan@champion", {}) == ""  # a local run keeps the SQLite store
    assert model_lookup_problem("rollout", "/models/export", {}) == ""


def test_the_summary_names_the_version_the_trigger_and_each_quarantined_input():
    result = BatchResult(model_name="horses", model_version="3", model_uri="models:/horses@champion",
                         resolved_uri="models:/horses/3", direction="AtoB", triggered_by="promotion of v3",
                         input_uri="s3://b/in", output_prefix="s3://b/out/horses/v3/AtoB",
                         manifest_uri="s3://b/out/horses/v3/AtoB/_manifest.json", translated=4, skipped=2,
                         quarantined=1, quarantine=[QuarantinedInput(source="x.png", reason="empty: 0 bytes")])
    markdown = summary_markdown(result, [("a.png", b"\x89PNG-before", b"\x89PNG-after")])
    assert "horses v3 AtoB" in markdown and "promotion of v3" in markdown and "`models:/horses/3`" in markdown
    assert "| `x.png` | empty: 0 bytes |" in markdown and markdown.count("data:image/png;base64,") == 2


def test_the_tolerance_counts_the_inputs_quarantined_now():
    result = BatchResult(model_name="m", model_version="1", model_uri="u", resolved_uri="u", direction="AtoB",
                         triggered_by="t", input_uri="s3://b/in", output_prefix="s3://b/out", manifest_uri="x",
                         quarantined=3, max_quarantined=2)
    assert not result.within_tolerance
    assert result.model_copy(update={"max_quarantined": 3}).within_tolerance
    assert result.model_copy(update={"max_quarantined": None}).within_tolerance
