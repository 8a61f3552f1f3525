"""The batch run's summary for people: markdown with the counts, before/after thumbnails and the quarantine.

``sample_thumbnails`` reads a few translated inputs and their outputs back from the stores and shrinks
them to small PNGs; ``summary_markdown`` puts them inline as data URIs (no link to a private bucket
that a browser could not open).
"""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Sequence

from PIL import Image

from pipelines.batch.job import BatchResult
from pipelines.batch.stores import open_store, parse_location

logger = logging.getLogger(__name__)

THUMBNAIL_PX = 96


def thumbnail_png(data: bytes, size: int = THUMBNAIL_PX) -> bytes:
    """A PNG of at most ``size`` x ``size`` pixels of the image in ``data``."""
    with Image.open(io.BytesIO(data)) as image:
        small = image.convert("RGB")
        small.thumbnail((size, size))
    buffer = io.BytesIO()
    small.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def sample_thumbnails(result: BatchResult, *, endpoint_url: str | None, region: str | None,
                      ) -> list[tuple[str, bytes, bytes]]:
    """(input path, before, after) thumbnails of the run's samples; one that cannot be read is left out."""
    source = open_store(parse_location(result.input_uri, endpoint_url=endpoint_url, region=region))
    root = open_store(parse_location(result.output_prefix, endpoint_url=endpoint_url, region=region))
    found = []
    for rel, output in result.samples:
        try:
            found.append((rel, thumbnail_png(source.read(rel)), thumbnail_png(root.read(output))))
        except Exception as exc:  # noqa: BLE001 - a sample is decoration: the summary goes out without it
            logger.warning("no thumbnail of %s: %s", rel, exc)
    return found


def _data_uri(png: bytes) -> str:
    return f"data:image/png;base64,{base64.b64encode(png).decode()}"


def summary_markdown(result: BatchResult, thumbnails: Sequence[tuple[str, bytes, bytes]] = ()) -> str:
    """The Prefect summary artifact of one run."""
    tolerance = "any number" if result.max_quarantined is None else str(result.max_quarantined)
    lines = [
        f"# translate-cyclegan: {result.model_name} v{result.model_version} {result.direction}",
        "",
        f"- triggered by: {result.triggered_by}",
        f"- model: `{result.model_uri}` resolved to `{result.resolved_uri}`",
        f"- input: `{result.input_uri}`",
        f"- output: `{result.output_prefix}` (manifest `{result.manifest_uri}`)",
        (f"- {result.translated} translated, {result.skipped} unchanged since an earlier run, "
         f"{result.quarantined} quarantined (tolerated: {tolerance}), {len(result.errors)} failed, "
         f"in {result.seconds:.1f}s"),
    ]
    if result.removed:
        lines.append(f"- {result.removed} input(s) of earlier runs no longer exist; their outputs are kept")
    if thumbnails:
        lines += ["", "| input | before | after |", "|---|---|---|"]
        lines += [f"| `{rel}` | ![before]({_data_uri(before)}) | ![after]({_data_uri(after)}) |"
                  for rel, before, after in thumbnails]
    for title, entries in (("Quarantined", result.quarantine), ("Failed (translated again by the next run)",
                                                                result.errors)):
        if entries:
            lines += ["", f"## {title}", "", "| input | reason |", "|---|---|"]
            lines += [f"| `{entry.source}` | {entry.reason.replace('|', '/')} |" for entry in entries]
    return "\n".join(lines) + "\n"
