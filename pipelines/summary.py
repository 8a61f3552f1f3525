"""The summary of one train-cyclegan run (pure): the Prefect summary artifact, what `cyclegan run` and
the demo print, and the description (``mlflow.note.content``) of the pipeline's MLflow run."""

from __future__ import annotations

import base64
from pathlib import Path

from pipelines.config import ResolvedConfig
from pipelines.records import ModelVersionRef, PipelineOutcome

FLOW_NAME = "train-cyclegan"
INLINE_GRID_BYTES = 512 * 1024  # larger sample grids are linked, not inlined


def summary_markdown(config: ResolvedConfig, outcome: PipelineOutcome, *, tracking_link: str = "",
                     inline_grid: bool = True) -> str:
    """The run summary (markdown): dataset and version, training (best epoch), model version and the
    gate's decision, links, metrics; ``tracking_link``: the pipeline's MLflow run; ``inline_grid``: the
    sample grid as an inline image (the Prefect artifact) rather than its path."""
    lines = [
        f"# {FLOW_NAME}: {config.registry.model_name}",
        "",
        (f"- dataset: `{outcome.dataset.uri}` version `{outcome.dataset.version}` "
         f"({', '.join(f'{k}: {v}' for k, v in sorted(outcome.dataset.counts.items()))}; "
         f"{outcome.dataset.quarantined} quarantined)"),
    ]
    if tracking_link:
        lines += [f"- MLflow run: {tracking_link}"]
    if outcome.skipped:
        lines += [f"- training skipped: {outcome.skipped}"]
        return "\n".join(lines) + "\n"
    assert outcome.train and outcome.report and outcome.model
    model, train = outcome.model, outcome.train
    best = (f"best epoch {train.best_epoch} by eval_{config.registry.primary_metric}" if train.best_epoch is not None
            else "the last epoch (nothing evaluated during training)")
    lines += [
        (f"- training: run `{train.run_name}` (fingerprint `{train.fingerprint}`), {train.epochs} epochs, "
         f"{train.steps} steps, checkpoint `{train.checkpoint_uri}`; registered: {best}"),
        (f"- model: `{model.name}` version {model.version} "
         f"(aliases: {', '.join(model.aliases) or 'none'}); {model.reason}"),
        f"- gate: {'promoted to champion' if model.promoted else 'champion unchanged'}",
        f"- MLflow: {mlflow_link(config.services.tracking_uri, model)}",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    for name, value in sorted(outcome.report.metrics.items()):
        marker = " (primary)" if name == outcome.report.primary_metric else ""
        lines.append(f"| {name}{marker} | {value:.4f} |")
    for name, why in sorted(outcome.report.skipped.items()):
        lines.append(f"| {name} | skipped: {why} |")
    grid = outcome.report.artifacts.get("grid_AtoB")
    if inline_grid and grid is not None and Path(grid).is_file() and Path(grid).stat().st_size < INLINE_GRID_BYTES:
        encoded = base64.b64encode(Path(grid).read_bytes()).decode()
        lines += ["", f"Sample grid (input | translated | reconstructed), `{grid}`:", "",
                  f"![grid_AtoB](data:image/png;base64,{encoded})"]
    elif grid is not None:
        lines += ["", f"Sample grid: `{grid}`"]
    return "\n".join(lines) + "\n"


def flow_run_line(flow_run_url: str | None) -> str:
    return f"\nPrefect flow run: {flow_run_url}\n" if flow_run_url else ""


def run_description(config: ResolvedConfig, outcome: PipelineOutcome, *, flow_run_url: str | None) -> str:
    """The pipeline's MLflow run description once it ends: the summary without inline images, with the
    Prefect flow run's link."""
    return summary_markdown(config, outcome, inline_grid=False) + flow_run_line(flow_run_url)


def running_description(config: ResolvedConfig, *, flow_run_url: str | None) -> str:
    """The description of the pipeline's MLflow run while it runs."""
    return (f"# {FLOW_NAME}: {config.registry.model_name}\n\n- running: dataset `{config.dataset_uri}`, "
            f"{config.train.total_epochs} epochs on {config.scaling.num_workers} Ray worker(s); each evaluated "
            "checkpoint appears under Logged models as it is saved\n" + flow_run_line(flow_run_url))


def failed_description(config: ResolvedConfig, reason: str, *, flow_run_url: str | None) -> str:
    return (f"# {FLOW_NAME}: {config.registry.model_name}\n\n- dataset: `{config.dataset_uri}`\n- failed: {reason}\n"
            + flow_run_line(flow_run_url))


def version_url(tracking_uri: str, model: ModelVersionRef) -> str | None:
    """The version's page in the MLflow UI (None: the store is not a tracking server)."""
    if not tracking_uri.startswith("http"):
        return None
    return f"{tracking_uri.rstrip('/')}/#/models/{model.name}/versions/{model.version}"


def mlflow_link(uri: str, model: ModelVersionRef) -> str:
    url = version_url(uri, model)
    if url is not None:
        return f"{url} (run {model.run_id})"
    return f"run {model.run_id} in {uri} (browse with `mlflow ui --backend-store-uri {uri}`)"
