"""The small typed records passed between pipeline stages (and cached by Prefect).

ingest -> DatasetRef -> train -> TrainResult -> evaluate -> EvalReport -> register -> ModelVersionRef
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetRef(Record):
    """A verified local copy of an S3 dataset prefix."""

    uri: str = Field(description="s3://bucket/prefix it was ingested from")
    root: Path = Field(description="local folder with trainA/ trainB/ testA/ testB/ (and testA_ref/)")
    manifest: Path = Field(description="manifest JSON of every object with its status")
    version: str = Field(description="hash of the clean manifest: same data, same version")
    counts: dict[str, int] = Field(default_factory=dict, description="clean images per split")
    quarantined: int = 0


class TrainResult(Record):
    """What a training run produced."""

    run_name: str
    checkpoint_uri: str = Field(description="latest training checkpoint (local path or s3:// URI)")
    generators_dir: Path = Field(description="local folder with exported G_AB/ and G_BA/ generators")
    dataset_version: str
    dataset_uri: str
    fingerprint: str = Field(description="training fingerprint of the config that trained (the run identity)")
    steps: int
    epochs: int
    metrics: dict[str, float] = Field(default_factory=dict, description="final-epoch metrics")
    history: list[dict[str, float]] = Field(default_factory=list, description="per-epoch metrics")
    best_epoch: int | None = Field(None, description="epoch of the checkpoint exported (the best by the primary "
                                                    "metric when evaluated during training); None: the last")
    exported_checkpoint_uri: str | None = Field(None, description="the checkpoint whose generators were exported "
                                                                  "(None: checkpoint_uri)")

    @property
    def exported_epoch(self) -> int:
        """The epoch of the exported generators."""
        return self.best_epoch if self.best_epoch is not None else self.epochs

    @property
    def exported_step(self) -> int:
        """The step of the exported generators (from the history; the last step when it lacks it)."""
        return next((int(entry["step"]) for entry in self.history
                     if int(entry.get("epoch", -1)) == self.exported_epoch and "step" in entry), self.steps)


class EvalReport(Record):
    """Evaluation of a trained model on the test splits."""

    metrics: dict[str, float]
    primary_metric: str
    primary_value: float
    skipped: dict[str, str] = Field(default_factory=dict, description="metric -> why it was not computed")
    artifacts: dict[str, Path] = Field(default_factory=dict, description="name -> file (sample grids, report)")


class ModelVersionRef(Record):
    """A registered MLflow model version."""

    name: str
    version: str
    run_id: str
    aliases: list[str] = Field(default_factory=list)
    promoted: bool = False
    reason: str = Field("", description="why the gate promoted or did not")

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


class PipelineOutcome(Record):
    """What one run of the train-cyclegan flow did."""

    dataset: DatasetRef
    train: TrainResult | None = None
    report: EvalReport | None = None
    model: ModelVersionRef | None = None
    skipped: str = Field(
        "", description="why training was skipped (the champion has this dataset version and fingerprint)"
    )
