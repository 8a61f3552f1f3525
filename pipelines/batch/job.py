"""``translate_batch``: the whole batch translation job, as a plain function (the flow and the CLI call it).

Resolve the model URI to a concrete version once (``models:/name@champion`` -> ``models:/name/3``),
download it once, list the inputs and the state of earlier runs of that version, translate only what
is new or changed on the Ray actor pool, then write the manifest (atomically) and drop the ledgers it
now covers. ``BatchSettings`` is resolved at the entry (``batch_settings``) and passed down.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from pydantic import BaseModel, Field

from cyclegan_core.backends import check_choice
from cyclegan_core.config import StrictModel
from cyclegan_core.pretrained import DIRECTIONS
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

logger = logging.getLogger(__name__)


class BatchSettings(StrictModel):
    """One batch translation run, resolved at its entry (``batch_settings``)."""

    input_uri: str
    output_uri: str
    model_uri: str
    direction: str = "AtoB"
    triggered_by: str = "manual"
    batch_size: int = Field(8, ge=1)
    actors: int | None = Field(None, ge=1, description="actor count (None: one per GPU, else one per cpus_per_actor)")
    use_gpu: bool | None = Field(None, description="None: GPUs when the Ray cluster has any")
    cpus_per_actor: float = Field(1.0, gt=0)
    memory_budget: int | None = Field(None, ge=1, description="bytes per actor; an image over it is tiled")
    backend: str = Field("auto", description="auto (measured on each node), torch or openvino (CPU actors)")
    precision: str = Field("auto", description="auto, fp32, bf16 or fp16 (int8 needs calibration: local files only)")
    cache_dir: Path | None = Field(None, description="auto decisions and OpenVINO models (None: each node's default)")
    max_quarantined: int | None = Field(0, ge=0, description="quarantined inputs tolerated (None: any number)")
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


def batch_settings(input_uri: str, output_uri: str, model_uri: str | None = None, *,
                   env: Mapping[str, str], **options: object) -> BatchSettings:
    """The settings of a run from its entry's arguments and environment (read here, once). Raises
    ValueError naming a bad URI, direction or option."""
    if options.get("direction", "AtoB") not in DIRECTIONS:
        raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, got {options['direction']!r}")
    backend, precision = str(options.get("backend", "auto")), str(options.get("precision", "auto"))
    check_choice(backend, precision)
    if precision == "int8":
        raise ValueError("precision int8 calibrates on images of the job's input domain, which the batch job does "
                         "not pick for its actors: use auto, fp32 or bf16 (int8: `cyclegan translate` on local files)")
    services = services_from_env(env)
    settings = BatchSettings(input_uri=input_uri, output_uri=output_uri, model_uri=model_uri or default_model_uri(),
                             services=services, cache_dir=services.cache_dir, **options)
    source, output = locations(settings)
    if output.contains(source) or source.contains(output):
        raise ValueError(f"output {output_uri} and input {input_uri} overlap: outputs would be read back as inputs; "
                         "choose an output prefix outside the input prefix")
    return settings


def locations(settings: BatchSettings) -> tuple[Location, Location]:
    services = settings.services
    options = {"endpoint_url": services.s3_endpoint_url, "region": services.s3_region}
    return parse_location(settings.input_uri, **options), parse_location(settings.output_uri, **options)


def local_model_identity(path: Path, uri: str) -> ModelIdentity:
    """A model folder's identity: its folder name and a hash of its files (a changed model, a new version)."""
    digest = hashlib.sha256()
    for rel, data in load_model_files(path).items():
        digest.update(rel.encode() + b"\0" + hashlib.sha256(data).digest())
    return ModelIdentity(name=path.name, version=f"sha-{digest.hexdigest()[:12]}", uri=uri, resolved_uri=str(path))


def fetch_model(settings: BatchSettings, download_dir: Path) -> tuple[ModelIdentity, Path]:
    """Resolve the model URI to a concrete version once and download exactly that version."""
    from pipelines.registry import download_model
    from pipelines.registry.operations import resolve_version

    uri, tracking_uri = settings.model_uri, settings.services.tracking_uri
    if not uri.startswith(("models:/", "runs:/")):
        path = Path(uri).expanduser().resolve()
        if not path.is_dir():
            raise FileNotFoundError(f"model {uri} is not an exported model folder (G_AB/ + G_BA/)")
        return local_model_identity(path, uri), path
    version = resolve_version(uri, tracking_uri=tracking_uri)
    if version is None:
        raise ValueError(f"model {uri}: batch translation needs a registered version (models:/NAME@ALIAS or "
                         "models:/NAME/VERSION): its outputs are keyed by that version")
    identity = ModelIdentity(name=version.name, version=version.version, uri=uri, resolved_uri=version.uri,
                             run_id=version.run_id)
    logger.info("%s resolved to version %s of %s (run %s)", uri, version.version, version.name, version.run_id)
    return identity, download_model(version.uri, download_dir / "model", tracking_uri=tracking_uri)


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
        model, model_dir = fetch_model(settings, download_dir)
        if on_model is not None:
            on_model(model)
        return translate_with(settings, model_dir, model, on_batch=on_batch)


def translate_with(settings: BatchSettings, model_dir: Path, model: ModelIdentity, *,
                   on_batch: Callable[[BatchProgress], None] | None = None) -> BatchResult:
    """Translate what is new or changed under ``settings.input_uri`` with the downloaded ``model_dir``
    (``model``: its identity) into the run root of that version; returns the run's result."""
    from pipelines.clients.ray_cluster import connect_ray

    started = time.perf_counter()
    source, output = locations(settings)
    root = output.child(run_root(model, settings.direction))
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

        pool = pool_size(actors=settings.actors, use_gpu=settings.use_gpu, cpus_per_actor=settings.cpus_per_actor,
                         batches=-(-len(plan.work) // settings.batch_size), cluster=ray.cluster_resources())
        logger.info("Ray Data actor pool: %d actor(s), %g GPU and %g CPU each, batches of %d", pool.actors,
                    pool.gpus_per_actor, pool.cpus_per_actor, settings.batch_size)
        spec = ActorSpec(source=source, root=root, model=model, direction=settings.direction,
                         batch_size=settings.batch_size, memory_budget=settings.memory_budget,
                         device="cuda" if pool.gpus_per_actor else "cpu", threads=max(1, int(pool.cpus_per_actor)),
                         backend=settings.backend, precision=settings.precision, cache_dir=settings.cache_dir)
        rows = run_on_ray(plan.work, spec, load_model_files(model_dir), pool, on_batch=on_batch)
    records = {record.source: record for record in plan.unchanged}
    records |= {row["source"]: InputRecord.model_validate({k: v or None for k, v in row.items()} | {"size": row["size"]})
                for row in rows if row["status"] != "error"}
    final = BatchManifest(model=model, direction=settings.direction, input_uri=source.uri, output_root=root.uri,
                          records=dict(sorted(records.items())))
    if rows or ledger_paths or plan.removed or manifest is None:  # else the manifest says this already
        root_store.write(MANIFEST, final.model_dump_json(indent=1).encode(), content_type="application/json")
    written = [obj.rel for obj in root_store.list(f"{LEDGER_FOLDER}/")] if rows else []
    for rel in sorted(set(ledger_paths + written)):
        root_store.delete(rel)  # the manifest holds their records now
    return summarise(settings, model, root, rows, final, unchanged=len(plan.unchanged), removed=len(plan.removed),
                     seconds=time.perf_counter() - started)


def summarise(settings: BatchSettings, model: ModelIdentity, root: Location, rows: list[dict], manifest: BatchManifest,
              *, unchanged: int, removed: int, seconds: float) -> BatchResult:
    quarantined = [QuarantinedInput(source=r.source, reason=r.reason or "") for r in manifest.records.values()
                   if r.status == "quarantined"]
    translated = [row for row in rows if row["status"] == "translated"]
    source, _ = locations(settings)
    result = BatchResult(
        model_name=model.name, model_version=model.version, model_uri=model.uri, resolved_uri=model.resolved_uri,
        direction=settings.direction, triggered_by=settings.triggered_by, input_uri=source.uri,
        output_prefix=root.uri, manifest_uri=root.object_uri(MANIFEST), translated=len(translated),
        skipped=unchanged,
        quarantined=len(quarantined), quarantine=quarantined,
        errors=[QuarantinedInput(source=row["source"], reason=row["reason"]) for row in rows if row["status"] == "error"],
        removed=removed, seconds=round(seconds, 3), max_quarantined=settings.max_quarantined,
        samples=[(row["source"], row["output"]) for row in translated[:3]],
    )
    logger.info("batch translation done in %.1fs: %d translated, %d unchanged, %d quarantined, %d failed; manifest %s",
                result.seconds, result.translated, result.skipped, result.quarantined, len(result.errors),
                result.manifest_uri)
    return result
