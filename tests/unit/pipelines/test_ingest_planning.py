"""pipelines.ingest.planning: which keys are safe, where each object goes, what is ignored or rejected."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipelines.clients.s3 import RemoteObject
from pipelines.ingest import IngestError, UnsafeKey, safe_relative_key
from pipelines.ingest.planning import dataset_root, normalise_prefix, plan_objects


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("trainA/../../x.png", "'..'"),
        ("/etc/x.png", "absolute"),
        ("trainA//x.png", "empty path segment"),
        ("trainA\\x.png", "backslash"),
        ("trainA/x\x00.png", "U+0000"),
        ("trainA/x\u202e.png", "U+202E"),  # right-to-left override
        ("C:/x.png", "drive-letter"),
        ("trainA/./x.png", "'.'"),
        ("trainA/" + "x" * 300 + ".png", "longer than 255 bytes"),
    ],
)
def test_unsafe_keys_are_rejected_with_a_reason(key: str, reason: str) -> None:
    with pytest.raises(UnsafeKey, match=re.escape(reason)):
        safe_relative_key(key)


def test_keys_are_nfc_normalised() -> None:
    assert safe_relative_key("trainA/cafe\u0301.png").as_posix() == "trainA/caf\u00e9.png"


def test_plan_sorts_objects_into_splits_rejected_and_ignored() -> None:
    listed = [RemoteObject(f"p/{rel}", 10, '"e"') for rel in (
        "trainB/b.jpg", "trainA/a.png", "trainA/", "notes.txt", "trainA/readme.txt", "trainA/.hidden.png",
        "trainA/deeper/x.png", "other/x.png", "trainA/../x.png", "testA_ref/r.png",
        "trainA/cafe\u0301.png", "trainA/caf\u00e9.png",
    )]
    listed[2] = RemoteObject("p/trainA/", 0, '"e"')  # a console's folder marker
    plan = plan_objects(listed, "p/")
    assert [(o.split, o.rel) for o in plan.objects] == [
        ("testA_ref", "testA_ref/r.png"), ("trainA", "trainA/a.png"), ("trainA", "trainA/caf\u00e9.png"),
        ("trainB", "trainB/b.jpg")]
    assert dict(plan.rejected) == {
        "p/trainA/../x.png": "'..' path segment",
        # keys sort by code point: the decomposed form (e + U+0301) comes first and keeps the path
        "p/trainA/caf\u00e9.png": "same local path as key 'p/trainA/cafe\u0301.png' after NFC normalisation",
    }
    assert plan.ignored == 6


def test_dataset_root_is_checked_like_a_key(tmp_path: Path) -> None:
    assert dataset_root(tmp_path, "bucket", "data/synth/") == tmp_path / "bucket" / "data" / "synth"
    assert dataset_root(tmp_path, "bucket", "") == tmp_path / "bucket"
    with pytest.raises(IngestError, match=r"s3://bucket/\.\./up cannot be cached locally: '\.\.'"):
        dataset_root(tmp_path, "bucket", "../up")
    assert normalise_prefix("/a/b/") == "a/b/" and normalise_prefix("") == ""
