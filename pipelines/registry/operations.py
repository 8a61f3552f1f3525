"""Registry operations: register a trained model (idempotent, gate applied), promote a version by
hand, read the champion's identity, download a model.

``register_model`` logs ONE run (``run_log``; the flow's live run when it passes one), registers the
LoggedModel of the exported checkpoint (``logged_models``) as a new version of
``config.registry.model_name`` with alias ``challenger`` and applies the gate (``gate``): ``champion``
moves to the new version when it wins. Moving an alias is the only state change the gate makes. A
retry reuses what an earlier, possibly interrupted, attempt left (a finished run without a version, a
version whose gate was not applied) instead of duplicating it. Each version carries its model card
(``model_card``: tags and the markdown description).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from cyclegan_core.atomic import owned_temp, sweep_stale_temps
from cyclegan_core.inference.pretrained import DIRECTION_FOLDERS
from pipelines.config import RegistrySettings, ResolvedConfig
from pipelines.records import EvalReport, ModelVersionRef, TrainResult
from pipelines.registry.gate import CHALLENGER, CHAMPION, gate_decision
from pipelines.registry.model_card import TAG_CHAMPION_VALUE, card_markdown, card_tags
from pipelines.registry.run_log import (
    TAG_KEY,
    TAG_METRIC,
    TAG_METRIC_VALUE,
    check_inputs,
    exported_identity,
    exported_model,
    fail_stale_runs,
    finished_run_id,
    log_into_run,
    log_run,
    registration_key,
    version_tags,
)
from pipelines.retry import RetryPolicy
from pipelines.tracking.experiment import TAG_DATASET_VERSION, TAG_FINGERPRINT, ensure_experiment, git_sha
from pipelines.tracking.run import TrackingRun, shared_tracking_uri
from pipelines.tracking.session import (
    MLFLOW_RETRY,
    RegistryError,
    check_reachable,
    global_tracking_uri,
    mlflow_client,
    with_mlflow_retries,
)

log = logging.getLogger(__name__)

TAG_GATE = "gate_decision"
TAG_GATE_REASON = "gate_reason"
TAG_REGISTERED_AS = "registered_model_version"  # on the flow's live run: name/version it registered

# Writes a version's description from (gate decision, reason, champion's value).
Describe = Callable[[str, str, float | None], str]
SEARCH_PAGE = 200  # model-version search page size


def versions(client: MlflowClient, name: str, filter_extra: str = "") -> list[ModelVersion]:
    """All versions of ``name`` (optionally narrowed by a filter clause), oldest first."""
    filter_string = f"name = '{name}'" + (f" and {filter_extra}" if filter_extra else "")
    found: list[ModelVersion] = []
    token = None
    while True:
        page = client.search_model_versions(filter_string, max_results=SEARCH_PAGE, page_token=token)
        found.extend(page)
        token = page.token
        if not token:
            break
    return sorted(found, key=lambda v: int(v.version))


def aliases(client: MlflowClient, name: str) -> dict[str, str]:
    """alias -> version of a registered model ({} when it does not exist)."""
    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return {}
        raise
    return {alias: str(version) for alias, version in model.aliases.items()}


def model_exists(client: MlflowClient, name: str) -> bool:
    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise
    return True


def ensure_registered_model(client: MlflowClient, name: str) -> None:
    try:
        client.create_registered_model(name, description="CycleGAN generators (pyfunc: translate images)")
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def metric_of(client: MlflowClient, version: ModelVersion, metric: str) -> float | None:
    """A version's value of ``metric``: from its version tags, else from its run's metrics."""
    if version.tags.get(TAG_METRIC) == metric and TAG_METRIC_VALUE in version.tags:
        return float(version.tags[TAG_METRIC_VALUE])
    if version.run_id:
        value = client.get_run(version.run_id).data.metrics.get(metric)
        if value is not None:
            return float(value)
    return None


def version_ref(client: MlflowClient, name: str, version: ModelVersion, *, promoted: bool,
                reason: str) -> ModelVersionRef:
    held = sorted(alias for alias, v in aliases(client, name).items() if v == str(version.version))
    return ModelVersionRef(name=name, version=str(version.version), run_id=version.run_id or "", aliases=held,
                           promoted=promoted, reason=reason)


def apply_gate(client: MlflowClient, version: ModelVersion, settings: RegistrySettings,
               report: EvalReport, *, describe: Describe | None = None) -> tuple[bool, str]:
    """Set challenger, decide, move champion if the challenger wins; record the decision (and the
    champion's value, and ``describe``'s description) on the version."""
    name, number = version.name, str(version.version)
    client.set_registered_model_alias(name, CHALLENGER, number)
    champion = aliases(client, name).get(CHAMPION)
    champion_value = None
    if champion is not None and champion != number:
        champion_value = metric_of(client, client.get_model_version(name, champion), settings.primary_metric)
    promote_it, reason = gate_decision(name=name, number=number, champion=champion,
                                       champion_value=champion_value, settings=settings, report=report)
    if promote_it and champion != number:
        client.set_registered_model_alias(name, CHAMPION, number)
    decision = "promoted" if promote_it else "kept_champion"
    if champion_value is not None:
        client.set_model_version_tag(name, number, TAG_CHAMPION_VALUE, repr(float(champion_value)))
    if describe is not None:
        client.update_model_version(name, number, description=describe(decision, reason, champion_value))
    # Written last: its presence tells a retry that this version is completely registered.
    client.set_model_version_tag(name, number, TAG_GATE_REASON, reason)
    client.set_model_version_tag(name, number, TAG_GATE, decision)
    return promote_it, reason


def finished_run_model(client: MlflowClient, run_id: str, train: TrainResult) -> str:
    """The id of the LoggedModel a finished run of an earlier attempt logged for ``train``."""
    model_id = exported_model(client, run_id, train)
    if model_id is None:
        raise RegistryError(f"MLflow run {run_id} is FINISHED but has no logged model of checkpoint "
                            f"{exported_identity(train).checkpoint_uri}; delete its registration_key tag or "
                            "register again with a new run name")
    return model_id


def register_once(client: MlflowClient, config: ResolvedConfig, train: TrainResult, report: EvalReport, *,
                  live: TrackingRun | None = None) -> ModelVersionRef:
    """One registration attempt (``register_model`` retries it): into ``live`` when given, else a run of
    its own; exactly one version per registration key, however many attempts."""
    name = config.registry.model_name
    key = registration_key(train)
    sha = git_sha()
    ensure_registered_model(client, name)
    existing = versions(client, name, f"tags.{TAG_KEY} = '{key}'")
    if existing:
        version = existing[0]
        if TAG_GATE in version.tags:
            reason = f"already registered as version {version.version}: {version.tags.get(TAG_GATE_REASON, '')}"
            log.info("model %s: %s", name, reason)
            if live is not None:
                client.set_tag(live.run_id, TAG_REGISTERED_AS, f"{name}/{version.version}")
            return version_ref(client, name, version, promoted=version.tags[TAG_GATE] == "promoted", reason=reason)
        log.info("model %s: completing half-registered version %s", name, version.version)
    else:
        experiment_id = ensure_experiment(client, config.registry.experiment, client.tracking_uri)
        fail_stale_runs(client, experiment_id, key, keep=live.run_id if live else None)
        # The flow's live run gets its own model (an earlier attempt's in it is reused); a run of its own
        # reuses a finished run of an earlier attempt that died before creating the version.
        run_id = live.run_id if live is not None else finished_run_id(client, experiment_id, key)
        if live is not None:
            model_id = log_into_run(client, run_id, config, train, report)
        elif run_id is not None:
            log.info("model %s: reusing finished run %s of an earlier attempt", name, run_id)
            model_id = finished_run_model(client, run_id, train)
        else:
            run_id, model_id = log_run(client, experiment_id, config, train, report)
        # what the UI's "Register model" on a LoggedModel does, plus the model card's tags
        version = client.create_model_version(name, source=f"models:/{model_id}", run_id=run_id,
                                              tags=version_tags(train, report) | card_tags(config, train, report,
                                                                                           git_sha=sha),
                                              model_id=model_id)
        log.info("model %s: registered version %s from LoggedModel %s (epoch %d) of run %s", name,
                 version.version, model_id, train.exported_epoch, run_id)

    def describe(decision: str, reason: str, champion_value: float | None) -> str:
        return card_markdown(config, train, report, git_sha=sha, decision=decision, reason=reason,
                             champion_value=champion_value)

    promoted, reason = apply_gate(client, version, config.registry, report, describe=describe)
    if live is not None:
        client.set_tag(live.run_id, TAG_REGISTERED_AS, f"{name}/{version.version}")
    log.info("model %s version %s: %s (%s)", name, version.version,
             f"promoted to {CHAMPION}" if promoted else f"{CHAMPION} unchanged", reason)
    return version_ref(client, name, version, promoted=promoted, reason=reason)


def register_model(config: ResolvedConfig, train: TrainResult, report: EvalReport, *,
                   retry: RetryPolicy = MLFLOW_RETRY, live: TrackingRun | None = None) -> ModelVersionRef:
    """Log the run, register a version (alias challenger) and apply the promotion gate (idempotent),
    at ``config.services.tracking_uri``. ``live``: the flow's open run to log into (it stays RUNNING).

    Raises RegistryError (``transient=True``) when the tracking server stays unreachable.
    """
    uri = config.services.tracking_uri
    if live is not None and live.tracking_uri != shared_tracking_uri(uri):
        raise RegistryError(f"the live MLflow run {live.run_id} is at {live.tracking_uri}, not at the config's "
                            f"tracking URI {uri}: open the run with the same ResolvedConfig")
    check_inputs(config, train, report)
    check_reachable(uri, policy=retry)
    client = mlflow_client(uri)
    # The SQL registry store resolves a version's models:/ source with a default MlflowClient (the
    # global URIs), so the whole registration runs with them pointed at this store.
    with global_tracking_uri(uri):
        return with_mlflow_retries(lambda: register_once(client, config, train, report, live=live),
                                   what=f"registering model {config.registry.model_name}", uri=uri,
                                   policy=retry)


def promote(name: str, version: str | int, alias: str = CHAMPION, *, tracking_uri: str,
            retry: RetryPolicy = MLFLOW_RETRY) -> ModelVersionRef:
    """Point ``alias`` of model ``name`` at ``version`` (what a person does in the UI).

    Raises RegistryError listing the existing models/versions when the target does not exist.
    """
    number = str(version).strip()
    check_reachable(tracking_uri, policy=retry)
    client = mlflow_client(tracking_uri)

    def move() -> ModelVersionRef:
        if not model_exists(client, name):
            models = sorted(m.name for m in client.search_registered_models(max_results=100))
            raise RegistryError(f"no registered model {name!r} at {tracking_uri}; existing models: {models or 'none'}")
        by_number = {str(v.version): v for v in versions(client, name)}
        if number not in by_number:
            raise RegistryError(f"model {name!r} has no version {number!r}; existing versions: "
                                f"{sorted(by_number, key=int) or 'none'}")
        previous = aliases(client, name).get(alias)
        client.set_registered_model_alias(name, alias, number)
        reason = (f"{alias} moved by hand from version {previous} to {number}" if previous
                  else f"{alias} set by hand to version {number}")
        log.info("model %s: %s", name, reason)
        return version_ref(client, name, by_number[number], promoted=True, reason=reason)

    return with_mlflow_retries(move, what=f"promoting {name} version {number}", uri=tracking_uri, policy=retry)


def champion_identity(name: str, *, tracking_uri: str, retry: RetryPolicy = MLFLOW_RETRY) -> tuple[str, str] | None:
    """(dataset_version, training_fingerprint) tags of the champion of ``name`` ('' for a tag it lacks);
    None when there is no such model or no champion."""
    check_reachable(tracking_uri, policy=retry)
    client = mlflow_client(tracking_uri)

    def lookup() -> tuple[str, str] | None:
        champion = aliases(client, name).get(CHAMPION)
        if champion is None:
            return None
        tags = client.get_model_version(name, champion).tags
        return tags.get(TAG_DATASET_VERSION, ""), tags.get(TAG_FINGERPRINT, "")

    return with_mlflow_retries(lookup, what=f"reading the champion of {name}", uri=tracking_uri, policy=retry)


def parse_model_uri(uri: str) -> tuple[str, str, str] | None:
    """(name, "alias" | "version", value) of ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``; None for
    another URI (``runs:/``, ``models:/<model_id>``)."""
    if not uri.startswith("models:/"):
        return None
    rest = uri.removeprefix("models:/").strip("/")
    if "@" in rest and "/" not in rest:
        name, alias = rest.split("@", 1)
        return (name, "alias", alias) if name and alias else None
    name, _, version = rest.rpartition("/")
    return (name, "version", version) if name and version.isdigit() else None


def resolve_version(uri: str, *, tracking_uri: str, retry: RetryPolicy = MLFLOW_RETRY) -> ModelVersionRef | None:
    """The registered version ``uri`` names now (``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``);
    None for a URI that names no registered version. Raises RegistryError for an unknown model,
    alias or version."""
    parsed = parse_model_uri(uri)
    if parsed is None:
        return None
    name, kind, value = parsed
    check_reachable(tracking_uri, policy=retry)
    client = mlflow_client(tracking_uri)

    def lookup() -> ModelVersionRef:
        try:
            version = (client.get_model_version_by_alias(name, value) if kind == "alias"
                       else client.get_model_version(name, value))
        except MlflowException as exc:
            if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise
            raise RegistryError(f"{uri}: no such {kind} of model {name!r} at {tracking_uri} ({exc.message})") from exc
        return version_ref(client, name, version, promoted=version.tags.get(TAG_GATE) == "promoted",
                           reason=version.tags.get(TAG_GATE_REASON, ""))

    return with_mlflow_retries(lookup, what=f"resolving {uri}", uri=tracking_uri, policy=retry)


def find_generators_folder(root: Path) -> Path | None:
    """The shallowest folder under ``root`` (itself included) holding both G_AB/ and G_BA/."""
    candidates = [root] + sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: (len(p.parts), str(p)))
    for folder in candidates:
        if all((folder / sub).is_dir() for sub in DIRECTION_FOLDERS.values()):
            return folder
    return None


def download_model(uri: str, dest: Path, *, tracking_uri: str, retry: RetryPolicy = MLFLOW_RETRY) -> Path:
    """Download ``models:/name@alias``, ``models:/name/3`` or ``runs:/<id>/<path>`` into ``dest``.

    Returns the local folder holding ``G_AB/`` and ``G_BA/`` (inside ``dest``; for a pyfunc model, the
    generators artifact inside it). ``dest`` must not exist or be empty; the download lands in a
    temporary sibling first and is renamed into place.
    """
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise RegistryError(f"download destination {dest} exists and is not an empty folder")
    check_reachable(tracking_uri, policy=retry)
    sweep_stale_temps(dest.parent, name=dest.name)
    with owned_temp(dest.parent, dest.name, folder=True) as staging:

        def fetch() -> str:
            return mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(staging),
                                                       tracking_uri=tracking_uri, registry_uri=tracking_uri)

        try:
            with global_tracking_uri(tracking_uri):
                with_mlflow_retries(fetch, what=f"downloading {uri}", uri=tracking_uri, policy=retry)
        except MlflowException as exc:
            raise RegistryError(f"cannot download {uri} from MLflow at {tracking_uri}: {exc}") from exc
        found = find_generators_folder(staging)
        if found is None:
            raise RegistryError(f"{uri} holds no folder with both G_AB/ and G_BA/ (not a CycleGAN model "
                                "logged by `cyclegan register`?)")
        relative = found.relative_to(staging)
        if dest.exists():
            dest.rmdir()
        staging.rename(dest)
    log.info("downloaded %s to %s", uri, dest / relative)
    return dest / relative
