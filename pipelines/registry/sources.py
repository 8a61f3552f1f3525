"""``fetch_model``: a ``ModelSource`` as a local path to load, the one place a model is fetched from the registry.

``models:/NAME@ALIAS`` is resolved to its version first and exactly that version is downloaded (the alias
may move meanwhile); a local source is used where it is. A registry source read from a local MLflow store
that does not exist is refused before MLflow would create an empty one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from cyclegan_core.inference.model_source import ModelSource
from pipelines.records import ModelVersionRef
from pipelines.registry.operations import download_model, resolve_version
from pipelines.tracking.session import RegistryError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FetchedModel:
    """A source made local: ``path`` (a model file or folder) and, for ``models:/``, the version it is."""

    source: ModelSource
    path: Path
    version: ModelVersionRef | None = None


def missing_local_store(tracking_uri: str) -> Path | None:
    """The file or folder of a local MLflow store (sqlite:///..., file:..., a path) when it does not exist."""
    parsed = urlparse(tracking_uri)
    if parsed.scheme == "sqlite":
        database = tracking_uri[len("sqlite:///"):].partition("?")[0] if tracking_uri.startswith("sqlite:///") else ""
        location = Path(database) if database and database != ":memory:" else None
    elif parsed.scheme in ("", "file"):
        location = Path(parsed.path if parsed.scheme else tracking_uri)
    else:
        return None
    return location if location is not None and not location.exists() else None


def check_store(source: ModelSource, tracking_uri: str, *, what: str = "") -> None:
    """Refuse (RegistryError, not transient) a registry source whose local MLflow store does not exist."""
    missing = missing_local_store(tracking_uri) if source.is_registry else None
    if missing is not None:
        raise RegistryError(f"{what or 'model ' + source.uri}: the MLflow store {tracking_uri} does not exist "
                            f"({missing}); set MLFLOW_TRACKING_URI to the tracking server or store that holds the "
                            "model")


def fetch_model(source: ModelSource, download_dir: Path, *, tracking_uri: str, require_version: bool = False,
                on_version: Callable[[ModelVersionRef], None] | None = None) -> FetchedModel:
    """``source`` as a local path: a local source as it is, a registry one downloaded into ``download_dir``.

    ``require_version``: refuse a registry URI that names no registered version (``runs:/``), for callers that
    key their outputs by the version. ``on_version`` hears the version a ``models:/`` URI resolved to.
    Raises RegistryError (``transient`` when a retry may help)."""
    if not source.is_registry:
        return FetchedModel(source, source.path.resolve())
    check_store(source, tracking_uri)
    version = resolve_version(source.uri, tracking_uri=tracking_uri)
    if version is None and require_version:
        raise RegistryError(f"model {source.uri}: batch translation needs a registered version (models:/NAME@ALIAS "
                            "or models:/NAME/VERSION): its outputs are keyed by that version")
    if version is not None:
        logger.info("%s resolved to version %s of %s (run %s)", source.uri, version.version, version.name,
                    version.run_id)
        if on_version is not None:
            on_version(version)
    path = download_model(version.uri if version else source.uri, download_dir / "model", tracking_uri=tracking_uri)
    return FetchedModel(source, path, version)
