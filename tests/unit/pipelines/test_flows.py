"""The flow's pure parts: which failures are retried, how runs are named, the summary artifact, what a
deployment run refuses, where the pipeline's log lines go."""

from __future__ import annotations

import logging
from pathlib import Path

from prefect.task_engine import TaskRunTimeoutError

from pipelines.clients.s3 import S3Error
from pipelines.config import PipelineConfig, resolve
from pipelines.flows.common import deployment_problem, is_transient_failure, pipeline_logs_in_run
from pipelines.flows.train import UNSEEN_MODEL, _train_cache_key, files_exist, skip_reason
from pipelines.ingest import IngestError
from pipelines.records import DatasetRef, EvalReport, ModelVersionRef, PipelineOutcome, TrainResult
from pipelines.registry import RegistryError
from pipelines.summary import failed_description, run_description, running_description, summary_markdown

CONFIG = resolve(PipelineConfig(dataset_uri="s3://bucket/horses"), env={})
DATASET = DatasetRef(uri="s3://bucket/horses", root=Path("/cache"), manifest=Path("/cache/manifest.json"),
                     version="ab" * 32, counts={"trainA": 3, "trainB": 4})


def test_network_and_service_outages_are_retried():
    assert is_transient_failure(ConnectionResetError("reset by peer"))
    assert is_transient_failure(S3Error("503 SlowDown", bucket="bucket", code="SlowDown", transient=True))
    assert is_transient_failure(RegistryError("tracking server unreachable", transient=True))


def test_bad_data_config_and_stage_timeouts_are_not_retried():
    assert not is_transient_failure(IngestError("s3://bucket/horses has no trainB/ images"))
    assert not is_transient_failure(ValueError("crop_size must be <= load_size"))
    assert not is_transient_failure(S3Error("NoSuchBucket", bucket="bucket", code="NoSuchBucket"))
    assert not is_transient_failure(TaskRunTimeoutError("train exceeded 72 h"))


def test_the_ray_run_is_named_after_the_data_and_the_config():
    name = CONFIG.ray_run_name(DATASET.version)
    assert name == f"cyclegan-{'ab' * 4}-{CONFIG.fingerprint[:8]}"
    assert CONFIG.ray_run_name(DATASET.version) == name  # a retry resumes the same run
    assert CONFIG.ray_run_name("cd" * 32) != name  # new data, new run
    other = resolve(PipelineConfig(dataset_uri="s3://bucket/horses", train={"lr": 1e-3}), env={})
    assert other.ray_run_name(DATASET.version) != name  # new config, new run
    assert CONFIG.run.run_name == "cyclegan"  # the config keeps the name the user gave


def test_the_train_cache_key_is_the_run_identity_and_where_its_files_live():
    def key(**changes: object) -> str:
        config = resolve(PipelineConfig(dataset_uri="s3://bucket/horses", **changes), env={})
        return _train_cache_key(None, {"config": config, "dataset": DATASET})

    assert key().startswith(f"train-{DATASET.version}-{CONFIG.fingerprint}-")
    assert key(cache_dir="/elsewhere/cache") == key()  # the dataset cache is not part of the result
    assert key(output_dir="/elsewhere/outputs") != key()  # the cached result points at these files
    assert key(run={"storage_path": "s3://bucket/runs"}) != key()
    assert key(train={"lr": 1e-3}) != key()


def test_a_result_whose_files_are_gone_is_not_trusted(tmp_path):
    trained = TrainResult(run_name="r", checkpoint_uri="/runs/c", generators_dir=tmp_path / "generators",
                          dataset_version="v", dataset_uri=DATASET.uri, fingerprint="f" * 16, steps=1, epochs=1)
    assert not files_exist(trained)
    (tmp_path / "generators").mkdir()
    assert files_exist(trained)
    report = EvalReport(metrics={"psnr_AtoB": 1.0}, primary_metric="psnr_AtoB", primary_value=1.0,
                        artifacts={"grid_AtoB": tmp_path / "grid.png"})
    assert not files_exist(report)
    (tmp_path / "grid.png").write_bytes(b"png")
    assert files_exist(report)


def test_summary_lists_metrics_model_and_skipped_metrics(tmp_path):
    outcome = PipelineOutcome(
        dataset=DATASET,
        train=TrainResult(run_name="cyclegan-x", checkpoint_uri="/runs/ckpt", generators_dir=tmp_path,
                          dataset_version=DATASET.version, dataset_uri=DATASET.uri, fingerprint="f" * 16, steps=10,
                          epochs=2),
        report=EvalReport(metrics={"psnr_AtoB": 18.5, "psnr_identity_AtoB": 10.0}, primary_metric="psnr_AtoB",
                          primary_value=18.5, skipped={"fid_AtoB": "no Inception weights"}),
        model=ModelVersionRef(name="cyclegan", version="3", run_id="r1", aliases=["challenger", "champion"],
                              promoted=True, reason="beats the champion"),
    )
    text = summary_markdown(CONFIG, outcome)
    assert "| psnr_AtoB (primary) | 18.5000 |" in text
    assert "| fid_AtoB | skipped: no Inception weights |" in text
    assert "version 3 (aliases: challenger, champion); beats the champion" in text
    assert "registered: the last epoch (nothing evaluated during training)" in text and "- gate: promoted" in text
    best = outcome.model_copy(update={"train": outcome.train.model_copy(update={"best_epoch": 1})})
    assert "registered: best epoch 1 by eval_psnr_AtoB" in summary_markdown(CONFIG, best)


def test_the_mlflow_run_description_is_the_summary_without_inline_images_and_links_the_flow_run(tmp_path):
    (tmp_path / "grid.png").write_bytes(b"\x89PNG")
    outcome = PipelineOutcome(
        dataset=DATASET,
        train=TrainResult(run_name="cyclegan-x", checkpoint_uri="/runs/ckpt", generators_dir=tmp_path,
                          dataset_version=DATASET.version, dataset_uri=DATASET.uri, fingerprint="f" * 16, steps=10,
                          epochs=2, best_epoch=2),
        report=EvalReport(metrics={"psnr_AtoB": 18.5}, primary_metric="psnr_AtoB", primary_value=18.5,
                          artifacts={"grid_AtoB": tmp_path / "grid.png"}),
        model=ModelVersionRef(name="cyclegan", version="3", run_id="r1", promoted=False, reason="champion stays"),
    )
    assert "data:image/png;base64" in summary_markdown(CONFIG, outcome)
    text = run_description(CONFIG, outcome, flow_run_url="http://prefect/runs/flow-run/f1")
    assert "data:image/png" not in text and f"Sample grid: `{tmp_path / 'grid.png'}`" in text
    assert f"`{DATASET.uri}` version `{DATASET.version}`" in text and "best epoch 2" in text
    assert "- gate: champion unchanged" in text and text.endswith("Prefect flow run: http://prefect/runs/flow-run/f1\n")
    assert "failed: RuntimeError: boom" in failed_description(CONFIG, "RuntimeError: boom", flow_run_url=None)
    assert "each evaluated checkpoint appears under Logged models" in running_description(CONFIG, flow_run_url=None)


def test_summary_of_a_skipped_run_says_why():
    text = summary_markdown(CONFIG, PipelineOutcome(dataset=DATASET, skipped="dataset unchanged"))
    assert "training skipped: dataset unchanged" in text


def test_summary_links_the_pipelines_mlflow_run():
    link = "http://mlflow:5000/#/experiments/1/runs/abc"
    text = summary_markdown(CONFIG, PipelineOutcome(dataset=DATASET, skipped="x"), tracking_link=link)
    assert f"- MLflow run: {link}" in text


def test_training_is_skipped_only_for_the_champions_data_and_fingerprint():
    assert "set force=true" in skip_reason((DATASET.version, CONFIG.fingerprint), DATASET, CONFIG)
    assert skip_reason(None, DATASET, CONFIG) == ""  # no champion yet
    assert skip_reason(("cd" * 32, CONFIG.fingerprint), DATASET, CONFIG) == ""  # new data
    for setting in ({"n_epochs": 7}, {"lr": 1e-3}, {"lambda_A": 5.0}):  # a manual re-run with new settings
        changed = resolve(PipelineConfig(dataset_uri="s3://bucket/horses", train=setting), env={})
        assert skip_reason((DATASET.version, CONFIG.fingerprint), DATASET, changed) == "", setting
    moved = resolve(PipelineConfig(dataset_uri="s3://bucket/horses", cache_dir="/elsewhere"), env={})
    assert skip_reason((DATASET.version, CONFIG.fingerprint), DATASET, moved)  # paths change nothing


def test_prefect_yaml_declares_the_two_deployments_and_the_nightly_cron():
    import yaml

    spec = yaml.safe_load((Path(__file__).resolve().parents[3] / "prefect.yaml").read_text())
    deployments = {
        d["name"]: d for d in spec["deployments"] if d["entrypoint"] == "pipelines/flows/train.py:train_cyclegan"
    }
    assert set(deployments) == {"manual", "nightly"}
    for deployment in deployments.values():
        assert deployment["entrypoint"] == "pipelines/flows/train.py:train_cyclegan"
        assert deployment["work_pool"]["name"] == "cyclegan-pool"
        PipelineConfig.model_validate(deployment["parameters"]["config"])
    (schedule,) = deployments["nightly"]["schedules"]
    assert schedule == {"cron": "0 3 * * *", "timezone": "UTC", "active": False}  # deployed paused
    from prefect.client.schemas.schedules import CronSchedule

    CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])


def test_a_deployment_run_without_a_tracking_server_is_refused():
    problem = deployment_problem("manual", {"RAY_ADDRESS": "auto"}, consequence=UNSEEN_MODEL)
    assert "MLFLOW_TRACKING_URI" in problem and "'manual'" in problem
    assert "MLFLOW_TRACKING_URI" in deployment_problem("nightly", {"MLFLOW_TRACKING_URI": ""},  # empty is unset
                                                       consequence=UNSEEN_MODEL)
    assert deployment_problem("manual", {"MLFLOW_TRACKING_URI": "http://mlflow:5000"}, consequence=UNSEEN_MODEL) == ""
    # `cyclegan run` and the demo keep the embedded SQLite store
    assert deployment_problem(None, {}, consequence=UNSEEN_MODEL) == ""


def test_pipeline_info_lines_go_to_the_run_only_while_the_flow_runs():
    from prefect.logging.handlers import APILogHandler

    pipeline_logger = logging.getLogger("pipelines")
    before = (pipeline_logger.level, list(pipeline_logger.handlers))
    with pipeline_logs_in_run():
        assert logging.getLogger("pipelines.train.progress").isEnabledFor(logging.INFO)
        assert sum(isinstance(h, APILogHandler) for h in pipeline_logger.handlers) == 1
        with pipeline_logs_in_run():  # nested (or PREFECT_LOGGING_EXTRA_LOGGERS=pipelines): no second handler
            assert sum(isinstance(h, APILogHandler) for h in pipeline_logger.handlers) == 1
    assert (pipeline_logger.level, pipeline_logger.handlers) == before
