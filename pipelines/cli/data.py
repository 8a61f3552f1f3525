"""``cyclegan synth | upload | ingest``: make a dataset, put it on S3, bring it into the local cache."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipelines.cli.app import app, console, fail, print_json, refuse, services


# --- data: synth (cyclegan_core.data.synthetic) -------------------------------------------------------
@app.command()
def synth(
    dest: Annotated[Path, typer.Argument(help="folder to create (trainA/ trainB/ testA/ testB/ testA_ref/)")],
    size: Annotated[int, typer.Option("--size", min=8, help="image side in pixels")] = 64,
    train: Annotated[int, typer.Option("--train", min=1, help="training images per domain")] = 400,
    test: Annotated[int, typer.Option("--test", min=1, help="test images per domain")] = 50,
    seed: Annotated[int, typer.Option("--seed", help="random seed (same seed, same bytes)")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace a non-empty DEST")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="print the summary as JSON (last line)")] = False,
) -> None:
    """Write the synthetic domain pair (warm scenes -> complementary hues, see cyclegan_core.data.synthetic)."""
    from cyclegan_core.data.synthetic import identity_psnr, make_synthetic_dataset

    try:
        root = make_synthetic_dataset(dest, size=size, n_train=train, n_test=test, seed=seed,
                                      overwrite=overwrite)
    except (FileExistsError, ValueError) as exc:
        refuse(str(exc))
    summary = {"root": str(root.resolve()), "size": size, "train": train, "test": test, "seed": seed,
               "identity_psnr_db": round(identity_psnr(root), 3)}
    typer.echo(f"wrote {root}: {train} train / {test} test images per domain at {size}x{size}; "
               f"identity baseline PSNR on testA_ref {summary['identity_psnr_db']:.2f} dB")
    if json_out:
        print_json(summary)


# --- S3: upload, ingest (pipelines.ingest) -------------------------------------------------------
@app.command()
def upload(
    local_dir: Annotated[Path, typer.Argument(help="folder to upload, e.g. from `cyclegan synth`")],
    uri: Annotated[str, typer.Argument(help="destination s3://bucket/prefix")],
    workers: Annotated[int, typer.Option("--workers", min=1, help="parallel uploads")] = 16,
    endpoint_url: Annotated[
        str | None, typer.Option("--endpoint-url", help="S3-compatible endpoint (default: AWS_ENDPOINT_URL)")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the summary as JSON (last line)")] = False,
) -> None:
    """Upload every file under LOCAL_DIR to s3://bucket/prefix, skipping objects that are unchanged."""
    from pipelines.clients.s3 import S3Error, make_s3_client, parse_s3_uri
    from pipelines.ingest import IngestError, upload_folder

    if not local_dir.is_dir():
        refuse(f"cannot upload {local_dir}: not a folder")
    try:
        parse_s3_uri(uri)
    except ValueError as exc:
        refuse(str(exc))
    try:
        endpoints = services()
        client = make_s3_client(endpoint_url=endpoint_url or endpoints.s3_endpoint_url,
                                region=endpoints.s3_region, max_pool_connections=workers)
        summary = upload_folder(local_dir, uri, max_workers=workers, client=client)
    except (IngestError, S3Error, ValueError, OSError) as exc:
        fail(str(exc))
    line = (f"uploaded {summary.local_dir} -> {summary.uri}: {summary.uploaded} sent, "
            f"{summary.skipped_unchanged} unchanged, {summary.bytes_uploaded / 1e6:.1f} MB in {summary.seconds:.1f}s")
    if json_out:
        console.print(line, markup=False, soft_wrap=True)
        print_json(summary.model_dump(mode="json"))
    else:
        typer.echo(line)


@app.command()
def ingest(
    uri: Annotated[str, typer.Argument(help="dataset s3://bucket/prefix holding trainA/ trainB/ testA/ testB/")],
    cache: Annotated[Path, typer.Option("--cache", help="local cache folder")] = Path(".cache/datasets"),
    load_size: Annotated[int, typer.Option("--load-size", min=1, help="side of the pre-decoded cache")] = 286,
    workers: Annotated[int, typer.Option("--workers", min=1, help="parallel downloads")] = 16,
    endpoint_url: Annotated[
        str | None, typer.Option("--endpoint-url", help="S3-compatible endpoint (default: AWS_ENDPOINT_URL)")
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="print the summary as JSON (last line; its 'dataset' is a DatasetRef)")
    ] = False,
) -> None:
    """Download, validate and cache an S3 dataset prefix incrementally; print its version and local root."""
    from pipelines.clients.s3 import S3Error, make_s3_client, parse_s3_uri
    from pipelines.ingest import IngestError, ingest_prefix

    try:
        parse_s3_uri(uri)
    except ValueError as exc:
        refuse(str(exc))
    try:
        endpoints = services()
        client = make_s3_client(endpoint_url=endpoint_url or endpoints.s3_endpoint_url,
                                region=endpoints.s3_region, max_pool_connections=workers)
        summary = ingest_prefix(uri, cache, load_size=load_size, max_workers=workers, client=client)
    except (IngestError, S3Error, ValueError, OSError) as exc:
        fail(str(exc))
    for key, reason in summary.quarantined:
        console.print(f"quarantined {key}: {reason}", markup=False, soft_wrap=True)
    for key, reason in summary.rejected_keys:
        console.print(f"rejected key {key!r}: {reason}", markup=False, soft_wrap=True)
    if json_out:
        console.print(summary.one_line(), markup=False, soft_wrap=True)
        print_json({**summary.model_dump(mode="json"), "dataset": summary.dataset.model_dump(mode="json")})
    else:
        typer.echo(summary.one_line())
