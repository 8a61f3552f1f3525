"""The pure parts of checkpoints as LoggedModels: names, tags, the version's model, which epoch a
TrainResult exported, reading a checkpoint's files (local storage). Against a real `mlflow server`:
tests/integration/test_besteval_ray.py and tests/e2e/test_flow.py."""

from __future__ import annotations

from pathlib import Path

import pyarrow.fs
from mlflow.entities.model_registry import ModelVersion

from pipelines.config import Services
from pipelines.records import TrainResult
from pipelines.registry.logged_models import CheckpointIdentity, version_model_id
from pipelines.train.checkpoint_models import evaluated, fetch_checkpoint_files
from pipelines.train.storage import resolve_storage


def test_a_checkpoint_model_is_named_after_its_epoch_and_tagged_with_its_origin() -> None:
    identity = CheckpointIdentity(epoch=12, step=1200, checkpoint_uri="s3://b/runs/r/checkpoint_epoch0012_step00001200",
                                  fingerprint="f" * 16, dataset_uri="s3://b/data", dataset_version="v1",
                                  ray_run_name="r")
    assert identity.name == "epoch-0012"
    assert identity.tags() == {"epoch": "12", "step": "1200", "checkpoint_uri": identity.checkpoint_uri,
                               "training_fingerprint": "f" * 16, "dataset_uri": "s3://b/data",
                               "dataset_version": "v1", "ray_run_name": "r"}


def version(source: str, model_id: str | None = None) -> ModelVersion:
    return ModelVersion(name="m", version="1", creation_timestamp=0, source=source, model_id=model_id)


def test_the_model_a_version_was_created_from() -> None:
    assert version_model_id(version("models:/m-0123abc")) == "m-0123abc"  # what MLflow's SQL registry keeps
    assert version_model_id(version("x", model_id="m-9")) == "m-9"
    assert version_model_id(version("models:/cyclegan/3")) is None  # a copy of another version
    assert version_model_id(version("runs:/abc/model")) is None


def test_only_evaluated_epochs_get_a_model() -> None:
    assert evaluated({"epoch": 3.0, "loss_G_A": 0.5, "eval_psnr_AtoB": 20.1}) == {"eval_psnr_AtoB": 20.1}
    assert evaluated({"epoch": 3.0, "loss_G_A": 0.5}) == {}


def test_the_exported_epoch_and_step_come_from_the_history() -> None:
    train = TrainResult(run_name="r", checkpoint_uri="/c4", generators_dir=Path("/g"), dataset_version="v",
                        dataset_uri="s3://b/d", fingerprint="f", steps=40, epochs=4, best_epoch=2,
                        history=[{"epoch": float(e), "step": 10.0 * e} for e in (1, 2, 3, 4)])
    assert (train.exported_epoch, train.exported_step) == (2, 20)
    last = train.model_copy(update={"best_epoch": None})
    assert (last.exported_epoch, last.exported_step) == (4, 40)


def test_a_checkpoints_files_are_read_unless_it_is_gone(tmp_path: Path) -> None:
    storage = resolve_storage(str(tmp_path / "runs"), Services())
    folder = tmp_path / "runs" / "run" / "checkpoint_epoch0001_step00000012"
    (folder / "samples").mkdir(parents=True)
    (folder / "cyclegan.pt").write_bytes(b"state")
    (folder / "samples" / "AtoB.png").write_bytes(b"png")
    (folder / "rank1_pools.pt").write_bytes(b"pools")
    dest = tmp_path / "read"
    dest.mkdir()

    assert fetch_checkpoint_files(storage, str(folder), dest)
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()) == ["cyclegan.pt",
                                                                                         "samples/AtoB.png"]
    pyarrow.fs.LocalFileSystem().delete_dir(str(folder))  # Ray's retention deleted it
    assert not fetch_checkpoint_files(storage, str(folder), tmp_path)


def test_a_hand_registered_checkpoint_is_described_as_the_training_of_its_epoch(tmp_path: Path) -> None:
    from mlflow.entities import LoggedModel

    from pipelines.registry.hand_registered import checkpoint_train_record

    identity = CheckpointIdentity(epoch=7, step=84, checkpoint_uri="s3://b/runs/r/checkpoint_epoch0007_step00000084",
                                  fingerprint="f" * 16, dataset_uri="s3://b/data", dataset_version="v1",
                                  ray_run_name="r")
    model = LoggedModel(experiment_id="1", model_id="m-1", name=identity.name, artifact_location="x",
                        creation_timestamp=0, last_updated_timestamp=0, tags=identity.tags())
    train = checkpoint_train_record(model, tmp_path)
    assert (train.best_epoch, train.exported_epoch, train.exported_step) == (7, 7, 84)
    assert (train.run_name, train.fingerprint, train.dataset_version) == ("r", "f" * 16, "v1")
    assert train.exported_checkpoint_uri == train.checkpoint_uri == identity.checkpoint_uri
