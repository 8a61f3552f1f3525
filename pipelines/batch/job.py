"""``translate_batch``: the whole batch translation job, as a plain function (the flow and the CLI call it).

Resolve the model URI to a concrete version once (``models:/name@champion`` -> ``models:/name/3``),
download it once, list the inputs and the state of earlier runs of that version, translate only what
is new or changed on the Ray actor pool, then write the manifest (atomically) and drop the ledgers it
now covers. ``BatchSettings`` (with the ``TranslateOptions``) is resolved at the entry (``batch_settings``)
and passed down.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from cyclegan_core.config import StrictModel
from cyclegan_core.inference.backends.interface import check_uncalibrated_choice
from cyclegan_core.inference.files import TranslateOptions
from cyclegan_core.inference.model_source import check_translatable, parse_model_source
from pipelines.batch.planning import (
    LEDGER_FOLDER,
    MANIFEST,
    BatchManifest,
    InputRecord,
    Ledger,
    ModelIdentity,
    current_state,
    parse_json,
    plan_work,
    run_root,
)
from pipelines.batch.ray_job import ActorSpec, BatchProgress, load_model_files, pool_size, run_on_ray
from pipelines.batch.stores import LocalStore, Location, open_store, parse_location
from pipelines.config import RegistrySettings, Services, services_from_env

if TYPE_CHECKING:
    from pipelines.registry.sources import FetchedModel

logger = logging.getLogger(__name__)


class BatchSettings(StrictModel):
    """One batch translation run, resolved at its entry (``batch_settings``)."""

    input_uri: str
    output_uri: str
    model_uri: str
    options: TranslateOptions = Field(default_factory=TranslateOptions)
    triggered_by: str = "manual"
    cpus_per_actor: float = Field(1.0, gt=0)
    cache_dir: Path | None = Field(None, description="auto decisions and OpenVINO models (None: each node's default)")
    services: Services


class QuarantinedInput(BaseModel):
    source: str
    reason: str


class BatchResult(BaseModel):
    """What a run did (the flow's return value, the CLI's JSON line)."""

    model_name: str
    model_version: str
    model_uri: str = Field(description="the URI asked for")
    resolved_uri: str = Field(description="the version used")
    direction: str
    triggered_by: str
    input_uri: str
    output_prefix: str = Field(description="the run root: <output>/<model>/v<version>/<direction>")
    manifest_uri: str
    translated: int = 0
    skipped: int = Field(0, description="inputs unchanged since the run that translated (or quarantined) them")
    quarantined: int = Field(0, description="inputs quarantined now, by this run or an earlier one")
    quarantine: list[QuarantinedInput] = Field(default_factory=list)
    errors: list[QuarantinedInput] = Field(default_factory=list, description="inputs that failed (retried next run)")
    removed: int = Field(0, description="inputs of earlier runs that no longer exist (their outputs are kept)")
    samples: list[tuple[str, str]] = Field(default_factory=list, description="(input, output) of a few translated")
    seconds: float = 0.0
    max_quarantined: int | None = 0

    @property
    def within_tolerance(self) -> bool:
        return self.max_quarantined is None or self.quarantined <= self.max_quarantined


class QuarantineToleranceError(RuntimeError):
    """More inputs were quarantined than the run tolerates (the outputs of the others are written)."""


def default_model_uri(model_name: str | None = None) -> str:
    return f"models:/{model_name or RegistrySettings().model_name}@champion"


def batch_settings(input_uri: str, output_uri: str, model_uri: str | None = None, *, env: Mapping[str, str],
                   options: TranslateOptions | None = None, triggered_by: str = "manual") -> BatchSettings:
    """The settings of a run from its entry's arguments and environment (read here, once). Raises
    ValueError naming a bad URI or option."""
    options = TranslateOptions() if options is None else options
    check_uncalibrated_choice(options.backend, options.precision, lacking="the batch job does not pick for its actors")
    services = services_from_env(env)
    settings = BatchSettings(
        input_uri=input_uri,
        output_uri=output_uri,
        model_uri=model_uri or default_model_uri(),
        options=options,
        triggered_by=triggered_by,
        services=services,
        cache_dir=services.cache_dir,
    )
    source, output = locations(settings)
    if output.contains(source) or source.contains(output):
        raise ValueError(f"output {output_uri} and input {input_uri} overlap: outputs would be read back as inputs; "
                         "choose an output prefix outside the input prefix")
    return settings


def locations(settings: BatchSettings) -> tuple[Location, Location]:
    services = settings.services
    options = {"endpoint_url": services.s3_endpoint_url, "region": services.s3_region}
    return parse_location(settings.input_uri, **options), parse_location(settings.output_uri, **options)


def model_identity(fetched: FetchedModel) -> ModelIdentity:
    """The identity a run's outputs are keyed by: the registered version, or for a local model its name and
    a hash of its content (a changed model is a new version): an official ``.pth``'s sha256, a folder's
    hash over its files."""
    uri, version = fetched.source.uri, fetched.version
    if version is not None:
        return ModelIdentity(name=version.name, version=version.version, uri=uri, resolved_uri=version.uri,
                             run_id=version.run_id)
    path = fetched.path
    if path.is_file():
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    else:
        folder = hashlib.sha256()
        for rel, data in load_model_files(path).items():
            folder.update(rel.encode() + b"\0" + hashlib.sha256(data).digest())
        digest = folder.hexdigest()
    return ModelIdentity(name=path.stem if path.is_file() else path.name, version=f"sha-{digest[:12]}", uri=uri,
                         resolved_uri=str(path), sha256=digest)


def fetch_batch_model(settings: BatchSettings, download_dir: Path) -> tuple[ModelIdentity, FetchedModel]:
    """The run's model made local once (a registry URI resolved to its version and exactly that version
    downloaded) and its identity. Raises GeneratorLoadError for a local path that is no translatable model."""
    from pipelines.registry.sources import fetch_model  # here: the actors import this package, not MLflow

    source = parse_model_source(settings.model_uri)
    if not source.is_registry:
        check_translatable(source)
    fetched = fetch_model(source, download_dir, tracking_uri=settings.services.tracking_uri, require_version=True)
    return model_identity(fetched), fetched


def read_state(root_store: object) -> tuple[BatchManifest | None, list[Ledger], list[str]]:
    """The manifest, the ledgers written since and their paths. One that does not parse is skipped with a
    warning: its inputs are translated again."""
    listing = root_store.list(MANIFEST) + root_store.list(f"{LEDGER_FOLDER}/")  # type: ignore[attr-defined]
    manifest, ledgers, ledger_paths = None, [], []
    for obj in listing:
        is_ledger = obj.rel.startswith(f"{LEDGER_FOLDER}/") and obj.rel.endswith(".json")
        if obj.rel != MANIFEST and not is_ledger:
            continue
        where = root_store.location.object_uri(obj.rel)  # type: ignore[attr-defined]
        try:
            parsed = parse_json(Ledger if is_ledger else BatchManifest, root_store.read(obj.rel), where)  # type: ignore[attr-defined]
        except ValueError as exc:
            logger.warning("ignoring %s (its inputs are translated again)", exc)
            continue
        if is_ledger:
            ledgers.append(parsed)
            ledger_paths.append(obj.rel)
        else:
            manifest = parsed
    return manifest, ledgers, ledger_paths  # type: ignore[return-value]


def translate_batch(settings: BatchSettings, *, on_model: Callable[[ModelIdentity], None] | None = None,
                    on_batch: Callable[[BatchProgress], None] | None = None) -> BatchResult:
    """The whole job: resolve and download the model (``on_model`` hears which version), translate what
    is new or changed, write the manifest. The flow and the CLI call this."""
    from cyclegan_core.atomic import scratch_folder

    with scratch_folder("batch", name="download") as download_dir:  # a killed run's is swept by the next
        model, fetched = fetch_batch_model(settings, download_dir)
        if on_model is not None:
            on_model(model)
        return translate_with(settings, fetched.path, model, on_batch=on_batch)


def translate_with(settings: BatchSettings, model_path: Path, model: ModelIdentity, *,
                   on_batch: Callable[[BatchProgress], None] | None = None) -> BatchResult:
    """Translate what is new or changed under ``settings.input_uri`` with the local ``model_path`` (a model
    folder or file; ``model``: its identity) into the run root of that version; returns the run's result."""
    from pipelines.clients.ray_cluster import connect_ray

    started = time.perf_counter()
    source, output = locations(settings)
    options = settings.options
    root = output.child(run_root(model, options.direction))
    source_store, root_store = open_store(source), open_store(root)
    if isinstance(root_store, LocalStore):
        root_store.sweep()  # temporaries of a killed run
    inputs = source_store.list()
    manifest, ledgers, ledger_paths = read_state(root_store)
    plan = plan_work(inputs, current_state(manifest, ledgers))
    logger.info("%s -> %s: %d input(s), %d to translate, %d unchanged since earlier runs (%s)", source.uri, root.uri,
                len(plan.work) + len(plan.unchanged), len(plan.work), len(plan.unchanged), model.resolved_uri)
    rows = []
    if plan.work:
        connect_ray(settings.services.ray_address)
        import ray

        pool = pool_size(actors=options.actors, use_gpu=options.use_gpu, cpus_per_actor=settings.cpus_per_actor,
                         batches=-(-len(plan.work) // options.batch_size), cluster=ray.cluster_resources())
        logger.info("Ray Data actor pool: %d actor(s), %g GPU and %g CPU each, batches of %d", pool.actors,
                    pool.gpus_per_actor, pool.cpus_per_actor, options.batch_size)
        spec = ActorSpec(
            source=source,
            root=root,
            model=model,
            direction=options.direction,
            batch_size=options.batch_size,
            memory_budget=options.memory_budget,
            device="cuda" if pool.gpus_per_actor else "cpu",
            threads=max(1, int(pool.cpus_per_actor)),
            backend=options.backend,
            precision=options.precision,
            cache_dir=settings.cache_dir,
            model_file=model_path.name if model_path.is_file() else "",
        )
        rows = run_on_ray(plan.work, spec, load_model_files(model_path), pool, on_batch=on_batch)
    records = {record.source: record for record in plan.unchanged}
    records |= {row["source"]: InputRecord.model_validate({k: v or None for k, v in row.items()}
                                                          | {"size": row["size"]})
                for row in rows if row["status"] != "error"}
    final = BatchManifest(model=model, direction=options.direction, input_uri=source.uri, output_root=root.uri,
                          records=dict(sorted(records.items())))
    if rows or ledger_paths or plan.removed or manifest is None:  # else the manifest says this already
        root_store.write(MANIFEST, final.model_dump_json(indent=1).encode(), content_type="application/json")
    written = [obj.rel for obj in root_store.list(f"{LEDGER_FOLDER}/")] if rows else []
    for rel in sorted(set(ledger_paths + written)):
        root_store.delete(rel)  # the manifest holds their records now
    return summarise(
        settings,
        model,
        root,
        rows,
        final,
        unchanged=len(plan.unchanged),
        removed=len(plan.removed),
        seconds=time.perf_counter() - started,
    )


def summarise(settings: BatchSettings, model: ModelIdentity, root: Location, rows: list[dict], manifest: BatchManifest,
              *, unchanged: int, removed: int, seconds: float) -> BatchResult:
    quarantined = [QuarantinedInput(source=r.source, reason=r.reason or "") for r in manifest.records.values()
                   if r.status == "quarantined"]
    translated = [row for row in rows if row["status"] == "translated"]
    source, _ = locations(settings)
    result = BatchResult(
        model_name=model.name, model_version=model.version, model_uri=model.uri, resolved_uri=model.resolved_uri,
        direction=settings.options.direction, triggered_by=settings.triggered_by, input_uri=source.uri,
        output_prefix=root.uri, manifest_uri=root.object_uri(MANIFEST), translated=len(translated),
        skipped=unchanged,
        quarantined=len(quarantined), quarantine=quarantined,
        errors=[QuarantinedInput(source=row["source"], reason=row["reason"])
                for row in rows if row["status"] == "error"],
        removed=removed, seconds=round(seconds, 3), max_quarantined=settings.options.max_skipped,
        samples=[(row["source"], row["output"]) for row in translated[:3]],
    )
    logger.info("batch translation done in %.1fs: %d translated, %d unchanged, %d quarantined, %d failed; manifest %s",
                result.seconds, result.translated, result.skipped, result.quarantined, len(result.errors),
                result.manifest_uri)
    return result
