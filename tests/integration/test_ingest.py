"""Ingestion and upload against a real moto S3 server (tests/conftest.py ``s3_server`` / ``s3_bucket``)."""

from __future__ import annotations

import filecmp
import io
import json
import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from cyclegan_core.data.images import decode_image
from pipelines.clients.s3 import S3Error, make_s3_client
from pipelines.config import PipelineConfig, resolve
from pipelines.ingest import (
    MANIFEST_FILE,
    QUARANTINE_FILE,
    IngestError,
    ingest_dataset,
    ingest_prefix,
    upload_folder,
)
from pipelines.records import DatasetRef
from tests.integration.faulty_proxy import FaultyProxy

LOAD_SIZE = 32
SPLITS = ("trainA", "trainB", "testA", "testB", "testA_ref")


def image_bytes(mode: str, fmt: str, size: tuple[int, int] = (16, 12), seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65535, size[::-1], dtype=np.uint16))
    else:
        channels = len(Image.new(mode, (1, 1)).getbands())
        pixels = rng.integers(0, 255, (size[1], size[0], channels), dtype=np.uint8)
        image = Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode=mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def forged_huge_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A 1x1 PNG whose IHDR claims width x height (a decompression bomb by its header)."""
    data = bytearray(image_bytes("RGB", "PNG", (1, 1)))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data[16:29] = ihdr  # signature(8) + length(4) + b"IHDR"(4), then 13 bytes of fields, then CRC
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


@pytest.fixture(scope="module")
def s3(s3_server: str) -> Any:
    """One direct client for the tests' own puts and deletes (building a client costs ~0.5 s)."""
    return make_s3_client(endpoint_url=s3_server)


def put_all(client: Any, bucket: str, objects: dict[str, bytes]) -> None:
    for key, body in objects.items():
        client.put_object(Bucket=bucket, Key=key, Body=body)


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def same_tree(a: Path, b: Path, splits: tuple[str, ...] = SPLITS) -> bool:
    for split in splits:
        names = sorted(p.name for p in (a / split).iterdir())
        if names != sorted(p.name for p in (b / split).iterdir()):
            return False
        if filecmp.cmpfiles(a / split, b / split, names, shallow=False)[0] != names:
            return False
    return True


@pytest.fixture()
def uploaded(synthetic_dataset: Path, s3_bucket: str, s3: Any) -> str:
    """The tiny synthetic dataset uploaded to s3://<bucket>/data/synth; returns the URI."""
    uri = f"s3://{s3_bucket}/data/synth"
    upload_folder(synthetic_dataset, uri, client=s3)
    return uri


def test_round_trip_and_unchanged_reingest(synthetic_dataset: Path, uploaded: str, s3: Any, tmp_path: Path) -> None:
    again = upload_folder(synthetic_dataset, uploaded, client=s3)
    assert again.uploaded == 0 and again.skipped_unchanged == again.files == len(files_under(synthetic_dataset))

    first = ingest_prefix(uploaded, tmp_path / "cache", load_size=LOAD_SIZE)
    bucket = uploaded.removeprefix("s3://").split("/")[0]
    assert first.root == (tmp_path / "cache" / bucket / "data" / "synth").resolve()
    assert first.counts == {"trainA": 24, "trainB": 24, "testA": 6, "testB": 6, "testA_ref": 6}
    assert first.downloaded == 66 and first.skipped_unchanged == 0 and first.ignored == 1  # synthetic.json
    assert first.quarantined == [] and first.rejected_keys == []
    assert same_tree(synthetic_dataset, first.root)
    assert first.decoded_cache is not None and (first.decoded_cache / "trainA.npy").is_file()
    dataset = first.dataset
    assert isinstance(dataset, DatasetRef) and dataset.version == first.version and dataset.root == first.root
    manifest = json.loads((first.root / MANIFEST_FILE).read_text())
    assert {e["status"] for e in manifest["objects"]} == {"ok"} and manifest["version"] == first.version
    assert {"key", "path", "size", "etag", "sha256", "split", "status", "reason"} <= set(manifest["objects"][0])

    second = ingest_prefix(uploaded, tmp_path / "cache", load_size=LOAD_SIZE, client=s3)
    assert second.downloaded == 0 and second.bytes_downloaded == 0 and second.skipped_unchanged == 66
    assert second.version == first.version and second.removed == 0
    assert same_tree(synthetic_dataset, second.root)

    elsewhere = ingest_prefix(uploaded, tmp_path / "other-cache", load_size=LOAD_SIZE, client=s3)
    assert elsewhere.version == first.version and elsewhere.downloaded == 66


def test_changed_object_is_refetched_and_deleted_object_removed(uploaded: str, s3: Any, tmp_path: Path) -> None:
    bucket = uploaded.removeprefix("s3://").split("/")[0]
    first = ingest_prefix(uploaded, tmp_path, load_size=LOAD_SIZE, client=s3)
    new_bytes = image_bytes("RGB", "PNG", (32, 32), seed=7)
    s3.put_object(Bucket=bucket, Key="data/synth/trainA/00003.png", Body=new_bytes)
    s3.delete_object(Bucket=bucket, Key="data/synth/trainB/00005.png")

    second = ingest_prefix(uploaded, tmp_path, load_size=LOAD_SIZE, client=s3)
    assert second.downloaded == 1 and second.skipped_unchanged == 64 and second.removed == 1
    assert second.version != first.version
    assert (second.root / "trainA/00003.png").read_bytes() == new_bytes
    assert not (second.root / "trainB/00005.png").exists()
    assert second.counts["trainB"] == 23
    keys = {e["key"] for e in json.loads((second.root / MANIFEST_FILE).read_text())["objects"]}
    assert "data/synth/trainB/00005.png" not in keys


def test_locally_damaged_file_is_refetched(uploaded: str, s3: Any, tmp_path: Path) -> None:
    first = ingest_prefix(uploaded, tmp_path, load_size=LOAD_SIZE, client=s3)
    victim = first.root / "testB/00001.png"
    original = victim.read_bytes()
    victim.write_bytes(original[:-1] + bytes([original[-1] ^ 0xFF]))  # same size, different content
    (first.root / "testB/stray.png").write_bytes(original)

    second = ingest_prefix(uploaded, tmp_path, load_size=LOAD_SIZE, client=s3)
    assert second.downloaded == 1 and victim.read_bytes() == original
    assert not (first.root / "testB/stray.png").exists() and second.version == first.version


def test_unchanged_files_are_not_rehashed(uploaded: str, s3: Any, tmp_path: Path, monkeypatch) -> None:
    """rsync's quick check: a local file with the recorded size and mtime is trusted without reading it."""
    from pipelines.ingest import manifest

    ingest_prefix(uploaded, tmp_path, load_size=LOAD_SIZE, client=s3)

    def no_hashing(path: Path) -> str:
        raise AssertionError(f"{path} was re-hashed although its size and mtime are unchanged")

    monkeypatch.setattr(manifest, "file_sha256", no_hashing)
    again = ingest_prefix(uploaded, tmp_path, load_size=LOAD_SIZE, client=s3)
    assert again.downloaded == 0 and again.skipped_unchanged > 0


def test_touched_file_is_rehashed_and_kept(uploaded: str, s3: Any, tmp_path: Path) -> None:
    """A file whose mtime moved but whose bytes did not is verified by its hash, not downloaded again."""
    first = ingest_prefix(uploaded, tmp_path, load_size=LOAD_SIZE, client=s3)
    touched = first.root / "trainA/00002.png"
    stat = touched.stat()
    os.utime(touched, ns=(stat.st_atime_ns, stat.st_mtime_ns + 7_000_000_000))

    again = ingest_prefix(uploaded, tmp_path, load_size=LOAD_SIZE, client=s3)
    assert again.downloaded == 0 and again.version == first.version


def test_local_file_replaced_by_a_symlink_is_refetched(uploaded: str, s3: Any, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = ingest_prefix(uploaded, cache, load_size=LOAD_SIZE, client=s3)
    victim = first.root / "trainB/00004.png"
    outside = tmp_path / "outside.png"
    outside.write_bytes(victim.read_bytes())
    victim.unlink()
    victim.symlink_to(outside)
    (first.root / "trainA" / "linked-folder").symlink_to(tmp_path, target_is_directory=True)

    again = ingest_prefix(uploaded, cache, load_size=LOAD_SIZE, client=s3)
    assert again.downloaded == 1 and again.version == first.version
    assert not victim.is_symlink() and victim.read_bytes() == outside.read_bytes()
    assert not (first.root / "trainA" / "linked-folder").exists(), "a stray symlink is removed, not followed"
    assert outside.is_file() and (tmp_path / "cache").is_dir()


def test_hostile_bucket(s3_bucket: str, s3: Any, tmp_path: Path) -> None:
    prefix = "hostile"
    rgb_jpeg = image_bytes("RGB", "JPEG", seed=1)
    rgb_png = image_bytes("RGB", "PNG", seed=2)
    full_jpeg = image_bytes("RGB", "JPEG", (64, 64), seed=8)
    truncated_jpeg = full_jpeg[: len(full_jpeg) * 2 // 3]  # header intact, scan data cut
    objects = {
        "trainA/rgb.jpg": rgb_jpeg,
        "trainA/rgb.png": rgb_png,
        "trainA/rgba.png": image_bytes("RGBA", "PNG", seed=3),
        "trainA/grey.jpg": image_bytes("L", "JPEG", seed=4),
        "trainA/grey16.png": image_bytes("I;16", "PNG", seed=5),
        "trainA/cmyk.jpg": image_bytes("CMYK", "JPEG", seed=6),
        "trainB/good.png": rgb_png,
        "trainB/truncated.jpg": truncated_jpeg,
        "trainB/empty.jpg": b"",
        "trainB/text.jpg": b"this is not a JPEG\n",
        "trainB/bomb.png": forged_huge_png(),
        "trainB/dup.jpg": image_bytes("CMYK", "JPEG", seed=9),  # its RGB copy would be dup.png:
        "trainB/dup.png": rgb_png,  # taken by this object
        "testA/ok.png": rgb_png,
        "notes.txt": b"ignored: not in a split",
        "trainA/readme.txt": b"ignored: not an image",
        "other/x.png": rgb_png,
    }
    hostile_keys = {
        f"{prefix}/trainA/../../escape.png": "'..'",
        f"{prefix}//abs/evil.png": "absolute",
        f"{prefix}/trainA/..\\..\\win.png": "backslash",
        f"{prefix}/trainA/bell\x07.png": "U+0007",
    }
    put_all(s3, s3_bucket, {f"{prefix}/{rel}": body for rel, body in objects.items()})
    put_all(s3, s3_bucket, dict.fromkeys(hostile_keys, rgb_png))
    cache = tmp_path / "cache"
    outside_before = files_under(tmp_path)

    summary = ingest_prefix(f"s3://{s3_bucket}/{prefix}", cache, load_size=LOAD_SIZE, client=s3)

    root = summary.root
    clean = {rel for rel in files_under(root) if rel.split("/")[0] in SPLITS}
    assert clean == {"trainA/rgb.jpg", "trainA/rgb.png", "trainA/rgba.png", "trainA/grey.png",
                     "trainA/grey16.png", "trainA/cmyk.png", "trainB/good.png", "trainB/dup.png", "testA/ok.png"}
    assert (root / "trainA/rgb.jpg").read_bytes() == rgb_jpeg  # already RGB: original bytes kept
    for rel in clean:
        with Image.open(root / rel) as image:
            assert image.mode == "RGB", rel
        decode_image(root / rel)
    assert summary.counts == {"trainA": 6, "trainB": 2, "testA": 1, "testB": 0}
    quarantined = dict(summary.quarantined)
    assert quarantined.pop(f"{prefix}/trainB/dup.jpg").startswith("converted_name_collision")
    assert quarantined == {
        f"{prefix}/trainB/truncated.jpg": "corrupt",
        f"{prefix}/trainB/empty.jpg": "empty",
        f"{prefix}/trainB/text.jpg": "not_image",
        f"{prefix}/trainB/bomb.png": "too_large",
    }
    rejected = dict(summary.rejected_keys)
    assert set(rejected) == set(hostile_keys)
    for key, reason in hostile_keys.items():
        assert reason in rejected[key], (key, rejected[key])
    assert summary.ignored == 3
    listed = json.loads((root / QUARANTINE_FILE).read_text())
    assert {q["key"] for q in listed} == set(dict(summary.quarantined))
    assert all(q["path"].startswith(".quarantine/") for q in listed)

    # Nothing outside the dataset root: every new file under tmp_path is inside it.
    new_files = files_under(tmp_path) - outside_before
    root_rel = root.relative_to(tmp_path.resolve()).as_posix()
    assert all(f.startswith(root_rel + "/") for f in new_files), sorted(new_files)
    assert not any(name.endswith(("escape.png", "evil.png", "win.png")) for name in new_files)
    assert not Path("/abs/evil.png").exists()


def test_missing_train_split_names_the_prefix(s3_bucket: str, s3: Any, tmp_path: Path) -> None:
    put_all(s3, s3_bucket, {"onlyA/trainA/a.png": image_bytes("RGB", "PNG"),
                            "onlyA/testB/b.png": image_bytes("RGB", "PNG")})
    with pytest.raises(IngestError, match=rf"s3://{s3_bucket}/onlyA has no trainB/ images; expected trainA/"):
        ingest_prefix(f"s3://{s3_bucket}/onlyA", tmp_path, client=s3)
    assert not (tmp_path / s3_bucket).exists()  # failed before writing anything


def test_train_split_with_only_invalid_images_is_an_error(s3_bucket: str, s3: Any, tmp_path: Path) -> None:
    put_all(s3, s3_bucket, {"bad/trainA/a.png": image_bytes("RGB", "PNG"), "bad/trainB/b.jpg": b"not an image"})
    with pytest.raises(IngestError, match=r"has no valid trainB/ images \(1 quarantined"):
        ingest_prefix(f"s3://{s3_bucket}/bad", tmp_path, client=s3)


def test_ingest_dataset_uses_the_resolved_config(s3_server: str, uploaded: str, tmp_path: Path) -> None:
    """The one call of the flow, `cyclegan train` and a Ray worker: endpoint, region, cache and load size
    all come from the ResolvedConfig (the fixture's AWS_ENDPOINT_URL is not what is used here)."""
    with FaultyProxy(s3_server, fail_every=9, drop_every=0, truncate_every=0) as proxy:
        config = resolve(PipelineConfig(dataset_uri=uploaded, cache_dir=tmp_path / "cache",
                                        data={"load_size": LOAD_SIZE, "crop_size": LOAD_SIZE}),
                         env={"AWS_ENDPOINT_URL": proxy.url, "AWS_REGION": "us-east-1"})
        summary = ingest_dataset(config)
    assert proxy.faults["503"] > 0, "ingest_dataset did not use config.services.s3_endpoint_url"
    assert summary.root.is_relative_to((tmp_path / "cache").resolve()) and summary.downloaded == 66
    assert summary.counts["trainA"] == 24 and summary.dataset.uri == uploaded
    assert summary.decoded_cache is not None and (summary.decoded_cache / "trainA.npy").is_file()


def test_missing_bucket_fails_fast(s3_server: str, tmp_path: Path) -> None:
    start = time.perf_counter()
    with pytest.raises(S3Error, match=r"s3://no-such-bucket-x.*NoSuchBucket.*check the bucket name"):
        ingest_prefix("s3://no-such-bucket-x/data", tmp_path)
    assert time.perf_counter() - start < 5.0
    assert not any(tmp_path.iterdir())


def test_ingest_through_faulty_network(s3_server: str, uploaded: str, s3: Any, tmp_path: Path) -> None:
    reference = ingest_prefix(uploaded, tmp_path / "direct", load_size=LOAD_SIZE, client=s3)
    with FaultyProxy(s3_server, fail_every=4, drop_every=11, truncate_every=7) as proxy:
        client = make_s3_client(endpoint_url=proxy.url)
        summary = ingest_prefix(uploaded, tmp_path / "faulty", load_size=LOAD_SIZE, client=client)
    assert proxy.faults["503"] > 0 and proxy.faults["drop"] > 0 and proxy.faults["truncate"] > 0
    assert summary.version == reference.version and summary.counts == reference.counts
    assert summary.quarantined == [] and summary.downloaded == 66
    assert same_tree(reference.root, summary.root)


def test_cli_upload_and_ingest_json(synthetic_dataset: Path, s3_bucket: str, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pipelines.cli import app

    runner = CliRunner()
    uri = f"s3://{s3_bucket}/cli"
    upload = runner.invoke(app, ["upload", str(synthetic_dataset), uri, "--json"])
    assert upload.exit_code == 0, upload.stderr[-3000:]
    assert json.loads(upload.stdout.strip().splitlines()[-1])["uploaded"] == 67

    ingest = runner.invoke(app, ["ingest", uri, "--cache", str(tmp_path), "--load-size", str(LOAD_SIZE),
                                 "--workers", "4", "--json"])
    assert ingest.exit_code == 0, ingest.stderr[-3000:]
    payload = json.loads(ingest.stdout.strip().splitlines()[-1])
    assert payload["counts"]["trainA"] == 24 and len(payload["version"]) == 64
    assert Path(payload["root"]).is_dir()
    assert DatasetRef.model_validate(payload["dataset"]).version == payload["version"]

    bad_uri = runner.invoke(app, ["ingest", "/not/s3", "--cache", str(tmp_path)])
    assert bad_uri.exit_code == 4 and "s3://bucket"  # ExitCode.REFUSED in bad_uri.stderr


def test_cli_reports_errors_without_traceback(s3_server: str, tmp_path: Path) -> None:
    cli = Path(sys.executable).with_name("cyclegan")
    result = subprocess.run([str(cli), "ingest", "s3://no-such-bucket-cli/x", "--cache", str(tmp_path)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 1
    assert "NoSuchBucket" in result.stderr and "Traceback" not in result.stderr


def test_concurrent_ingest_of_the_same_root_is_refused(uploaded: str, s3: Any, tmp_path: Path) -> None:
    from pipelines.ingest import exclusive_lock

    first = ingest_prefix(uploaded, tmp_path, load_size=LOAD_SIZE, client=s3)
    with exclusive_lock(first.root, uploaded), pytest.raises(IngestError, match="another ingest"):
        ingest_prefix(uploaded, tmp_path, load_size=LOAD_SIZE, client=s3)


def test_upload_skips_objects_uploaded_in_parts(s3_bucket: str, s3: Any, tmp_path: Path) -> None:
    from boto3.s3.transfer import TransferConfig

    folder = tmp_path / "big"
    folder.mkdir()
    data = np.random.default_rng(0).integers(0, 255, 11 * 2**20 + 7, dtype=np.uint8).tobytes()
    (folder / "blob.bin").write_bytes(data)
    (folder / "small.txt").write_text("x")
    five_mib = 5 * 2**20  # S3's smallest part size
    s3.upload_file(str(folder / "blob.bin"), s3_bucket, "up/blob.bin",
                   Config=TransferConfig(multipart_threshold=five_mib, multipart_chunksize=five_mib))
    assert s3.head_object(Bucket=s3_bucket, Key="up/blob.bin")["ETag"].strip('"').endswith("-3")

    summary = upload_folder(folder, f"s3://{s3_bucket}/up", client=s3)
    assert summary.uploaded == 1 and summary.skipped_unchanged == 1  # only small.txt was sent
    (folder / "small.txt").write_text("y")
    assert upload_folder(folder, f"s3://{s3_bucket}/up", client=s3).uploaded == 1
