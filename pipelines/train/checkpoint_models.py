"""The driver side of evaluated checkpoints as MLflow LoggedModels (``pipelines.registry.logged_models``).

``CheckpointModels.submit`` is the progress reporter's ``on_checkpoint``: for each checkpoint Ray Train
has committed, it queues the logging of its LoggedModel into the pipeline's MLflow run on driver
threads, so neither the workers (they never wait for MLflow) nor the progress lines wait for it. One
thread reads the checkpoint at once (``cyclegan.pt``, downloaded when the storage is S3: the generators
are exported, and the sample grids), before Ray's retention can delete it with the next commit; another
logs the model, then prunes: the weights of a model whose checkpoint Ray's
retention has deleted (``run.num_to_keep`` best plus the latest), or that a newer model of the same
checkpoint folder replaced (a run resumed before it), are deleted, unless a registered version was
created from it. ``finish`` waits for the queue and prunes once more. A tracking failure is a warning:
it never fails the training.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow.fs

from cyclegan_core.atomic import scratch_folder
from cyclegan_core.inference.translator import Translator
from pipelines.config import ResolvedConfig
from pipelines.records import DatasetRef
from pipelines.tracking.run import TrackingRun
from pipelines.train.layout import CHECKPOINT_FILE, SAMPLES_FOLDER
from pipelines.train.storage import StorageTarget

if TYPE_CHECKING:  # the driver imports MLflow only where it logs
    from mlflow.tracking import MlflowClient

logger = logging.getLogger(__name__)


def evaluated(metrics: dict[str, float]) -> dict[str, float]:
    """The ``eval_<metric>`` values of an epoch's record (empty: the epoch was not evaluated)."""
    return {key: value for key, value in metrics.items() if key.startswith("eval_")}


def fetch_checkpoint_files(storage: StorageTarget, path: str, dest: Path) -> bool:
    """Copy the checkpoint's ``cyclegan.pt`` and ``samples/`` into ``dest``; False when the checkpoint
    is gone (Ray's retention deleted it)."""
    fs = storage.filesystem or pyarrow.fs.LocalFileSystem()
    source = f"{path}/{CHECKPOINT_FILE}"
    if fs.get_file_info(source).type != pyarrow.fs.FileType.File:
        return False
    local = pyarrow.fs.LocalFileSystem()
    try:
        pyarrow.fs.copy_files(source, str(dest / CHECKPOINT_FILE), source_filesystem=fs, destination_filesystem=local)
        samples = f"{path}/{SAMPLES_FOLDER}"
        if fs.get_file_info(samples).type == pyarrow.fs.FileType.Directory:
            (dest / SAMPLES_FOLDER).mkdir()
            pyarrow.fs.copy_files(samples, str(dest / SAMPLES_FOLDER), source_filesystem=fs,
                                  destination_filesystem=local)
    except FileNotFoundError:
        if fs.get_file_info(source).type == pyarrow.fs.FileType.File:
            raise
        return False  # deleted while we copied it
    return True


class CheckpointModels:
    """Evaluated checkpoints of the Ray run ``run_name`` as LoggedModels of ``tracking`` (see the module
    docstring)."""

    def __init__(self, tracking: TrackingRun, storage: StorageTarget, run_name: str, config: ResolvedConfig,
                 dataset: DatasetRef) -> None:
        self.tracking, self.storage, self.run_name = tracking, storage, run_name
        self.config, self.dataset = config, dataset
        self.logged: dict[str, str] = {}  # checkpoint URI -> model id, the models of this call
        # Two stages: reading a checkpoint must not wait behind the logging of the previous one (Ray's
        # retention may delete a checkpoint once the next one is committed).
        self._readers = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-models-read")
        self._loggers = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-models-log")

    def _client(self) -> MlflowClient:
        from pipelines.tracking.session import mlflow_client

        return mlflow_client(self.tracking.tracking_uri)

    def submit(self, path: str, metrics: dict[str, float]) -> None:
        """Queue the LoggedModel of the checkpoint at ``path`` (storage filesystem path) with its epoch's
        record; an epoch that was not evaluated has none."""
        if not evaluated(metrics):
            return
        context = contextvars.copy_context()  # its log lines belong to the caller's run (Prefect task)
        self._readers.submit(context.run, self._read_then_queue, path, dict(metrics))

    def finish(self) -> dict[str, str]:
        """Wait for the queued models, prune once more; returns checkpoint URI -> model id of this call."""
        self._readers.shutdown(wait=True)
        self._loggers.shutdown(wait=True)
        self._guarded("pruning", self.prune)
        return dict(self.logged)

    def _read_then_queue(self, path: str, metrics: dict[str, float]) -> None:
        files = ExitStack()
        missing = ""  # why the model gets no weights
        try:
            folder: Path | None = files.enter_context(scratch_folder("checkpoint-models", name="checkpoint"))
            if not self.read(path, folder):
                missing = "its checkpoint was deleted by Ray Train's retention before it could be read"
        except Exception as exc:  # noqa: BLE001 - a checkpoint that does not load gets no weights
            logger.warning("cannot read checkpoint %s for its MLflow LoggedModel: %s", self.storage.uri(path), exc)
            missing = f"its checkpoint could not be read: {exc}"
        if missing:
            files.close()
            files, folder = ExitStack(), None
        context = contextvars.copy_context()
        self._loggers.submit(context.run, self._log_and_prune, path, metrics, folder, missing, files)

    def read(self, path: str, dest: Path) -> bool:
        """Export the generators (``dest/generators``) and copy the sample grids (``dest/samples``) of the
        checkpoint at ``path``; False when it is gone."""
        if not fetch_checkpoint_files(self.storage, path, dest):
            return False
        Translator.from_checkpoint(dest / CHECKPOINT_FILE).save_pretrained(dest / "generators")
        (dest / CHECKPOINT_FILE).unlink()  # the training state: not needed any more
        return True

    def _log_and_prune(self, path: str, metrics: dict[str, float], folder: Path | None, missing: str,
                       files: ExitStack) -> None:
        with files:
            self._guarded(f"logging the LoggedModel of checkpoint {self.storage.uri(path)}", self.log, path,
                          metrics, folder, missing)
        self._guarded("pruning", self.prune)

    def _guarded(self, what: str, fn: Callable[..., object], *args: object) -> None:
        try:
            fn(*args)
        except Exception as exc:  # MLflow trouble must never stop training
            logger.warning("%s in MLflow run %s at %s failed: %s", what, self.tracking.run_id,
                           self.tracking.tracking_uri, exc, exc_info=logger.isEnabledFor(logging.DEBUG))

    def log(self, path: str, metrics: dict[str, float], folder: Path | None, missing: str = "") -> str:
        """Log the LoggedModel of the checkpoint at ``path`` from what ``read`` put in ``folder`` (None:
        it could not be read, ``missing`` says why); returns its id."""
        from pipelines.registry.logged_models import CheckpointIdentity, log_checkpoint_model

        uri = self.storage.uri(path)
        identity = CheckpointIdentity(epoch=int(metrics["epoch"]), step=int(metrics["step"]), checkpoint_uri=uri,
                                      fingerprint=self.config.fingerprint, dataset_uri=self.dataset.uri,
                                      dataset_version=self.dataset.version, ray_run_name=self.run_name)
        model_id = log_checkpoint_model(
            self._client(), self.tracking.run_id, identity, metrics=evaluated(metrics),
            generators_dir=folder / "generators" if folder is not None else None,
            samples_dir=folder / SAMPLES_FOLDER if folder is not None else None, missing=missing)
        self.logged[uri] = model_id
        logger.info("checkpoint %s of epoch %d: MLflow LoggedModel %s (%s)", uri, identity.epoch, identity.name,
                    model_id)
        return model_id

    def prune(self) -> list[str]:
        """Delete the weights of this Ray run's models in the MLflow run whose checkpoint is gone or was
        logged again since (see the module docstring); returns their ids."""
        from pipelines.registry.logged_models import (
            TAG_CHECKPOINT,
            TAG_RAY_RUN,
            delete_weights,
            has_weights,
            registered_model_ids,
            run_models,
        )

        client = self._client()
        models = [model for model in run_models(client, self.tracking.run_id,
                                                filter_extra=f"tags.{TAG_RAY_RUN} = '{self.run_name}'")]
        newest: dict[str, str] = {}
        for model in sorted(models, key=lambda m: m.creation_timestamp):
            newest[model.tags.get(TAG_CHECKPOINT, "")] = model.model_id
        registered = None
        pruned = []
        fs = self.storage.filesystem or pyarrow.fs.LocalFileSystem()
        for model in models:
            if not has_weights(model):
                continue
            uri = model.tags.get(TAG_CHECKPOINT, "")
            if newest.get(uri) != model.model_id:
                reason = f"checkpoint {uri} was trained again (a resumed run); a newer LoggedModel holds it"
            elif fs.get_file_info(uri.removeprefix(self.storage.uri_prefix)).type == pyarrow.fs.FileType.NotFound:
                reason = (f"Ray Train's retention deleted checkpoint {uri} (run.num_to_keep="
                          f"{self.config.run.num_to_keep} best by eval_{self.config.registry.primary_metric}, "
                          "plus the latest)")
            else:
                continue
            registered = registered_model_ids(client, self.tracking.run_id) if registered is None else registered
            if model.model_id in registered:
                continue  # a version was created from it: its weights are the version's
            delete_weights(client, model, reason)
            pruned.append(model.model_id)
        return pruned
