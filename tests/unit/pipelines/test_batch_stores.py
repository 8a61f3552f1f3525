"""A local folder as batch translation's store: listing (recursive, hidden files and owned temporaries
left out, below a sub-path), whole-file writes, locations and their overlap."""

from __future__ import annotations

import hashlib
from pathlib import Path

from pipelines.batch.stores import LocalStore, parse_location


def test_a_local_store_lists_recursively_with_md5_tags_and_skips_hidden_files(tmp_path: Path):
    store = LocalStore(parse_location(str(tmp_path / "out")))
    store.write("sub/a.png", b"aaa")
    store.write("_ledger/1.json", b"{}")
    (tmp_path / "out" / ".b.png.tmp-host-1-x").write_bytes(b"half")  # a killed writer's temporary
    listed = {obj.rel: obj for obj in store.list()}
    assert set(listed) == {"sub/a.png", "_ledger/1.json"}
    assert listed["sub/a.png"].etag == hashlib.md5(b"aaa").hexdigest() and listed["sub/a.png"].size == 3
    assert [obj.rel for obj in store.list("_ledger/")] == ["_ledger/1.json"]
    assert [obj.rel for obj in store.list("sub/a.png")] == ["sub/a.png"]
    assert store.list("_manifest.json") == []
    store.delete("sub/a.png")
    assert store.read("_ledger/1.json") == b"{}" and "sub/a.png" not in {o.rel for o in store.list()}


def test_locations_below_one_another_overlap_and_siblings_do_not(tmp_path: Path):
    images, inside, sibling = (parse_location(str(tmp_path / p)) for p in ("in", "in/out", "in-out"))
    assert images.contains(inside) and not images.contains(sibling)
    s3 = parse_location("s3://bucket/in/", endpoint_url="http://127.0.0.1:9000")
    assert (s3.uri, s3.prefix, s3.child("a/b.png").uri) == ("s3://bucket/in", "in", "s3://bucket/in/a/b.png")
    assert s3.child("x").endpoint_url == "http://127.0.0.1:9000" and not s3.contains(images)
