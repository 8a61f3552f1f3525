"""The MLflow run of one trained, evaluated model: params, metrics, lineage tags, records, the model.

Params and ``records/config.yaml`` are the resolved config that trained, without services
(``config.user_config()``: ``run.run_name`` as the user gave it); the Ray run name and the training
fingerprint are tags. The generators are logged once, as the pyfunc inside the LoggedModel of the
exported checkpoint (``logged_models``; during training when the run was live). A run and its model
version carry a ``registration_key`` (Ray run name + checkpoint URI + training fingerprint), so a
retry finds what an earlier attempt logged, and marks FAILED a run a killed attempt left RUNNING.
``log_run`` creates and finishes a run of its own (``cyclegan register``); ``log_into_run`` fills the
flow's live run (``pipelines.tracking.run``), which the flow closes: what is already there (the epochs
logged live, params, a model an earlier attempt logged) is not logged twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import yaml
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from cyclegan_core.atomic import scratch_folder
from cyclegan_core.inference.pretrained import DIRECTION_FOLDERS
from pipelines.config import ResolvedConfig
from pipelines.records import EvalReport, TrainResult
from pipelines.registry.logged_models import (
    CheckpointIdentity,
    find_checkpoint_model,
    link_metrics,
    log_checkpoint_model,
)
from pipelines.tracking.experiment import TAG_DATASET_VERSION, TAG_FINGERPRINT, flatten_params, git_sha
from pipelines.tracking.session import RegistryError

log = logging.getLogger(__name__)

PARAM_BATCH = 100  # MLflow's log_batch accepts at most 100 params per call
METRIC_BATCH = 1000

# Tags written on runs and versions (read back by the gate, champion_identity and retries).
TAG_KEY = "registration_key"
TAG_METRIC = "primary_metric"
TAG_METRIC_VALUE = "primary_metric_value"
TAG_FAILED_REASON = "failed_reason"  # on a stale run a retry marked FAILED


def registration_key(train: TrainResult) -> str:
    """Identity of one training result: the same result registered twice gets the same key."""
    payload = json.dumps([train.run_name, train.checkpoint_uri, train.fingerprint])
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def lineage_tags(train: TrainResult) -> dict[str, str]:
    """Run tags that say where a model came from."""
    return {
        "dataset_uri": train.dataset_uri,
        TAG_DATASET_VERSION: train.dataset_version,
        "git_sha": git_sha(),
        "ray_run_name": train.run_name,
        "checkpoint_uri": train.checkpoint_uri,
        TAG_FINGERPRINT: train.fingerprint,
        TAG_KEY: registration_key(train),
    }


def version_tags(train: TrainResult, report: EvalReport) -> dict[str, str]:
    """Tags every registered version carries (the gate reads the metric back from them)."""
    return {
        TAG_DATASET_VERSION: train.dataset_version,
        "dataset_uri": train.dataset_uri,
        TAG_METRIC: report.primary_metric,
        TAG_METRIC_VALUE: repr(float(report.primary_value)),
        TAG_FINGERPRINT: train.fingerprint,
        "train_run_name": train.run_name,
        "checkpoint_uri": train.checkpoint_uri,
        TAG_KEY: registration_key(train),
    }


def finished_run_id(client: MlflowClient, experiment_id: str, key: str) -> str | None:
    """A finished run of an earlier attempt with the same registration key (its model fully logged)."""
    runs = client.search_runs([experiment_id],
                              filter_string=f"tags.{TAG_KEY} = '{key}' and attributes.status = 'FINISHED'",
                              max_results=1, order_by=["attributes.start_time DESC"])
    return runs[0].info.run_id if runs else None


def fail_stale_runs(client: MlflowClient, experiment_id: str, key: str, *, keep: str | None = None) -> list[str]:
    """Mark FAILED the runs with registration key ``key`` still RUNNING: an earlier attempt whose client
    died mid-registration (SIGKILL skips ``log_run``'s own FAILED marking), except run ``keep`` (the
    live run this attempt registers into). Returns their ids."""
    runs = client.search_runs([experiment_id],
                              filter_string=f"tags.{TAG_KEY} = '{key}' and attributes.status = 'RUNNING'",
                              max_results=100)
    runs = [run for run in runs if run.info.run_id != keep]
    for run in runs:
        client.set_tag(run.info.run_id, TAG_FAILED_REASON, "interrupted registration; a retry with the same "
                       f"{TAG_KEY} replaced it")
        client.set_terminated(run.info.run_id, status="FAILED")
        log.warning("marked MLflow run %s FAILED: a registration attempt with the same %s %s was interrupted "
                    "while it was RUNNING", run.info.run_id, TAG_KEY, key)
    return [run.info.run_id for run in runs]


def check_inputs(config: ResolvedConfig, train: TrainResult, report: EvalReport) -> None:
    """Refuse early (before any run exists) when the files to log are missing or the config is not the
    one that trained."""
    if train.fingerprint != config.fingerprint:
        raise RegistryError(
            f"TrainResult.fingerprint {train.fingerprint} is not the fingerprint {config.fingerprint} of the "
            "config given: register with the config the run was trained with (MLflow logs it as the run's "
            "params)")
    for name, path in report.artifacts.items():
        if not Path(path).exists():
            raise RegistryError(f"EvalReport.artifacts[{name!r}] = {path} does not exist")
    generators_dir = Path(train.generators_dir)
    missing = [f for f in DIRECTION_FOLDERS.values() if not (generators_dir / f / "config.json").is_file()]
    if missing:
        raise RegistryError(f"TrainResult.generators_dir {generators_dir} lacks exported generator(s) {missing} "
                            "(each needs config.json + model.safetensors; see Translator.save_pretrained)")


def run_metrics(train: TrainResult) -> list[Metric]:
    """Per-epoch training metrics (``train/<name>`` by epoch) and the final ones (``train/final/<name>``)."""
    now = int(time.time() * 1000)
    metrics = [Metric(f"train/{name}", float(value), now, int(entry.get("epoch", epoch)))
               for epoch, entry in enumerate(train.history, start=1) for name, value in entry.items()
               if name != "epoch"]
    metrics += [Metric(f"train/final/{name}", float(value), now, train.epochs) for name, value in train.metrics.items()]
    return metrics


def exported_identity(train: TrainResult) -> CheckpointIdentity:
    """The identity of the checkpoint whose generators ``train`` exported."""
    return CheckpointIdentity(epoch=train.exported_epoch, step=train.exported_step,
                              checkpoint_uri=train.exported_checkpoint_uri or train.checkpoint_uri,
                              fingerprint=train.fingerprint, dataset_uri=train.dataset_uri,
                              dataset_version=train.dataset_version, ray_run_name=train.run_name)


def exported_model(client: MlflowClient, run_id: str, train: TrainResult) -> str | None:
    """Id of run ``run_id``'s LoggedModel of the exported checkpoint (logged during training or by an
    earlier attempt), None when it has none with its weights."""
    identity = exported_identity(train)
    model = find_checkpoint_model(client, run_id, identity.checkpoint_uri, identity.fingerprint)
    return model.model_id if model is not None else None


def log_contents(client: MlflowClient, run_id: str, config: ResolvedConfig, train: TrainResult,
                 report: EvalReport) -> str:
    """Log params, metrics, eval artifacts and records into run ``run_id``, and make sure it has the
    LoggedModel of the exported checkpoint (logged during training, else from ``train.generators_dir``),
    the evaluation's metrics linked to it; returns its model id. Params and per-epoch metrics the run
    already holds (logged live) and a model already logged are kept, not logged again."""
    existing = client.get_run(run_id).data
    live = {key for key in existing.metrics if key.startswith("train/") and not key.startswith("train/final/")}
    user_config = config.user_config()
    params = [Param(k, v) for k, v in flatten_params(user_config).items() if k not in existing.params]
    for start in range(0, len(params), PARAM_BATCH):
        client.log_batch(run_id, params=params[start : start + PARAM_BATCH])
    metrics = [metric for metric in run_metrics(train) if metric.key not in live]
    for start in range(0, len(metrics), METRIC_BATCH):
        client.log_batch(run_id, metrics=metrics[start : start + METRIC_BATCH])
    for name, path in report.artifacts.items():
        if Path(path).is_dir():
            client.log_artifacts(run_id, str(path), artifact_path=f"eval/{name}")
        else:
            client.log_artifact(run_id, str(path), artifact_path="eval")
    with scratch_folder("register", name="records") as tmp:
        records = tmp / "records"
        records.mkdir()
        (records / "config.yaml").write_text(yaml.safe_dump(user_config.model_dump(mode="json"), sort_keys=False))
        (records / "train_result.json").write_text(train.model_dump_json(indent=2))
        (records / "eval_report.json").write_text(report.model_dump_json(indent=2))
        client.log_artifacts(run_id, str(records), artifact_path="records")
    identity = exported_identity(train)
    model_id = exported_model(client, run_id, train) or log_checkpoint_model(
        client, run_id, identity, generators_dir=Path(train.generators_dir), metrics={})
    # the final evaluation (run metrics as before), linked to the model it scored
    link_metrics(client, run_id, model_id, report.metrics, identity=identity)
    return model_id


def log_into_run(client: MlflowClient, run_id: str, config: ResolvedConfig, train: TrainResult,
                 report: EvalReport) -> str:
    """Register into the flow's live run ``run_id``: lineage tags, then ``log_contents``; returns the
    model id. The run stays RUNNING (the flow closes it FINISHED or FAILED)."""
    client.log_batch(run_id, tags=[RunTag(key, value) for key, value in lineage_tags(train).items()])
    return log_contents(client, run_id, config, train, report)


def log_run(client: MlflowClient, experiment_id: str, config: ResolvedConfig, train: TrainResult,
            report: EvalReport) -> tuple[str, str]:
    """Log one complete run; returns (run_id, model_id). The run is FINISHED only once all is logged."""
    run_id = client.create_run(experiment_id, run_name=train.run_name, tags=lineage_tags(train)).info.run_id
    try:
        model_id = log_contents(client, run_id, config, train, report)
    except BaseException:
        try:
            client.set_terminated(run_id, status="FAILED")
        except MlflowException as exc:  # the original error matters more than this bookkeeping
            log.warning("could not mark MLflow run %s FAILED: %s", run_id, exc)
        raise
    client.set_terminated(run_id, status="FINISHED")
    return run_id, model_id
