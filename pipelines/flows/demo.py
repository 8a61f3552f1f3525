"""``make demo`` / ``cyclegan demo``: the whole pipeline end to end on a laptop, nothing to configure.

1. writes the synthetic domain pair (``cyclegan_core.data.synthetic``; B = f(A) with ground truth for testA),
2. starts an S3-compatible server on loopback (moto's standalone server) and uploads the dataset to it,
   so the real boto3 ingestion path runs,
3. runs the Prefect flow ``train-cyclegan`` (Prefect's ephemeral API): ingest from that S3 endpoint,
   train on a local Ray cluster on CPU, evaluate, register in the SQLite MLflow store and promote,
4. prints where everything is and the metrics, including paired PSNR against the identity baseline.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from pydantic import Field

from cyclegan_core.config import DataConfig, ModelConfig, Precision, StrictModel, TrainConfig
from cyclegan_core.data.synthetic import make_synthetic_dataset
from pipelines.clients.embedded import embedded_s3
from pipelines.clients.s3 import make_s3_client
from pipelines.config import (
    DEFAULT_ARTIFACT_ROOT,
    EvalSettings,
    PipelineConfig,
    RegistrySettings,
    ScalingSettings,
    TrainingRunSettings,
    resolve,
)
from pipelines.flows.train import train_cyclegan
from pipelines.ingest import upload_folder
from pipelines.records import PipelineOutcome

logger = logging.getLogger(__name__)

DEMO_BUCKET = "cyclegan-demo"
DEMO_PREFIX = "synthetic"
DEMO_MODEL_NAME = "cyclegan-demo"


class DemoSettings(StrictModel):
    """Sizes of the demo; the defaults train in a few minutes on 2 CPU cores and beat the identity
    baseline on paired PSNR by a wide margin (figures in README.md)."""

    out_dir: Path = Path("demo-output")
    image_size: int = Field(32, ge=16)
    n_train: int = Field(200, ge=4)
    n_test: int = Field(20, ge=2)
    epochs: int = Field(6, ge=1)
    epochs_decay: int = Field(4, ge=0)
    ngf: int = Field(16, ge=2)
    ndf: int = Field(16, ge=2)
    num_workers: int = Field(2, ge=1)
    precision: Precision = Field("auto", description="train.precision (auto: measured on this CPU; fp32: official)")
    seed: int = 0


def demo_config(settings: DemoSettings) -> PipelineConfig:
    """The pipeline configuration the demo runs (a small but real CycleGAN)."""
    out = settings.out_dir.resolve()
    return PipelineConfig(
        dataset_uri=f"s3://{DEMO_BUCKET}/{DEMO_PREFIX}",
        cache_dir=out / "cache",
        output_dir=out / "outputs",
        model=ModelConfig(generator="resnet_6blocks", ngf=settings.ngf, ndf=settings.ndf),
        train=TrainConfig(
            n_epochs=settings.epochs,
            n_epochs_decay=settings.epochs_decay,
            batch_size=4,
            lr=2e-4 * 2,
            pool_size=50,
            precision=settings.precision,
            seed=settings.seed,
        ),
        data=DataConfig(preprocess="none", load_size=settings.image_size, crop_size=settings.image_size,
                        num_workers=0),
        scaling=ScalingSettings(num_workers=settings.num_workers, cpus_per_worker=1,
                                local_num_cpus=settings.num_workers),
        run=TrainingRunSettings(run_name="cyclegan-demo", storage_path=str(out / "runs"),
                                checkpoint_every_epochs=2, max_failures=1),
        eval=EvalSettings(max_images=settings.n_test),
        registry=RegistrySettings(model_name=DEMO_MODEL_NAME, experiment="cyclegan-demo",
                                  primary_metric="psnr_AtoB"),
        force=True,
    )


def run_demo(settings: DemoSettings | None = None) -> PipelineOutcome:
    """Run the whole pipeline on embedded services and return what the flow did."""
    settings = settings or DemoSettings()
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    logger.info("demo: writing the synthetic dataset (%d px, %d train / %d test images per domain)",
                settings.image_size, settings.n_train, settings.n_test)
    root = make_synthetic_dataset(settings.out_dir / "synthetic", size=settings.image_size,
                                  n_train=settings.n_train, n_test=settings.n_test, seed=settings.seed,
                                  overwrite=True)
    config = demo_config(settings)
    with embedded_s3() as endpoint:
        logger.info("demo: S3-compatible server at %s, uploading to %s", endpoint, config.dataset_uri)
        services = resolve(config).services
        client = make_s3_client(endpoint_url=services.s3_endpoint_url, region=services.s3_region)
        client.create_bucket(Bucket=DEMO_BUCKET)
        upload_folder(root, config.dataset_uri, client=client)
        outcome = train_cyclegan(config)
    logger.info("demo: finished in %.0f s", time.monotonic() - started)
    return outcome


def demo_summary(outcome: PipelineOutcome, *, tracking_uri: str) -> str:
    """What the demo prints at the end: where things are and what training bought."""
    assert outcome.report is not None and outcome.model is not None and outcome.train is not None
    metrics = outcome.report.metrics
    uri = tracking_uri
    ui = (f"mlflow ui --backend-store-uri {uri} --default-artifact-root {DEFAULT_ARTIFACT_ROOT}"
          if uri.startswith("sqlite") else f"open {uri}")
    lines = [
        "",
        "CycleGAN demo finished.",
        (f"  model        models:/{outcome.model.name}@champion  (version {outcome.model.version}, "
         f"aliases: {', '.join(outcome.model.aliases)})"),
        f"  gate         {outcome.model.reason}",
        f"  MLflow UI    {ui}",
        f"  sample grid  {outcome.report.artifacts.get('grid_AtoB', 'n/a')}",
        f"  checkpoint   {outcome.train.checkpoint_uri}",
        f"  registered   epoch {outcome.train.best_epoch or outcome.train.epochs} of {outcome.train.epochs}"
        + (" (the best evaluated during training)" if outcome.train.best_epoch else " (the last)"),
        f"  translate    cyclegan translate --model models:/{outcome.model.name}@champion INPUT OUTPUT",
        "",
        "Paired test metrics (G_AB(testA) vs the ground truth f(testA)):",
    ]
    for name in ("psnr", "ssim", "l1"):
        trained, identity = metrics.get(f"{name}_AtoB"), metrics.get(f"{name}_identity_AtoB")
        if trained is not None and identity is not None:
            lines.append(f"  {name.upper():5} trained {trained:8.4f}   identity baseline {identity:8.4f}")
    if "psnr_AtoB" in metrics and "psnr_identity_AtoB" in metrics:
        lines.append(
            f"  PSNR gain over the identity baseline: {metrics['psnr_AtoB'] - metrics['psnr_identity_AtoB']:+.2f} dB"
        )
    for name in ("cycle_l1_A", "cycle_l1_B", "fid_AtoB", "kid_AtoB"):
        if name in metrics:
            lines.append(f"  {name:10} {metrics[name]:.4f}")
    by_reason: dict[str, list[str]] = {}
    for name, why in sorted(outcome.report.skipped.items()):
        by_reason.setdefault(why, []).append(name)
    for why, names in by_reason.items():
        lines.append(f"  {', '.join(names)} skipped: {why}")
    lines += eval_curve(outcome.train.history, primary=outcome.report.primary_metric,
                        best_epoch=outcome.train.best_epoch)
    return "\n".join(lines)


def eval_curve(history: list[dict[str, float]], *, primary: str, best_epoch: int | None) -> list[str]:
    """The per-epoch evaluation during training (the ``eval_`` metrics of each evaluated epoch), one
    line per epoch with a bar for the primary metric; the registered (best) epoch is marked."""
    key = f"eval_{primary}"
    rows = [(int(record["epoch"]), record) for record in history if key in record]
    if not rows:
        return []
    values = [record[key] for _, record in rows]
    low, high = min(values), max(values)
    lines = ["", f"Evaluation during training ({primary} on held-out test images; the registered epoch marked):"]
    for epoch, record in rows:
        bar = "#" * (1 + round(29 * (record[key] - low) / (high - low))) if high > low else "#"
        cycle = record.get("eval_cycle_l1_A")
        mark = "  <- best, registered" if epoch == best_epoch else ""
        lines.append(f"  epoch {epoch:3d}  {record[key]:8.4f}  {bar:<30}"
                     + (f"  cycle_l1_A {cycle:.4f}" if cycle is not None else "") + mark)
    return lines
