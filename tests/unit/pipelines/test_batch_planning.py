"""Batch translation's pure parts: output names, what a re-run has to do, the state after a crash, the
actor pool's size, the refused overlaps."""

from __future__ import annotations

import pytest

from cyclegan_core.inference.files import translate_options
from pipelines.batch import batch_settings
from pipelines.batch.planning import (
    BatchManifest,
    InputRecord,
    Ledger,
    ModelIdentity,
    current_state,
    output_names,
    plan_work,
    run_root,
)
from pipelines.batch.ray_job import pool_size
from pipelines.batch.stores import StoredObject

MODEL = ModelIdentity(name="horses", version="3", uri="models:/horses@champion", resolved_uri="models:/horses/3")


def record(source: str, etag: str, status: str = "translated", at: str = "2026-12-01T00:00:00") -> InputRecord:
    return InputRecord(source=source, etag=etag, size=1, status=status, finished_at=at)


def test_outputs_are_pngs_named_after_their_inputs_and_a_png_keeps_a_shared_stem():
    assert output_names(["a.jpg", "sub/b.webp", "c.jpg", "c.png"]) == {
        "a.jpg": "a.png", "sub/b.webp": "sub/b.png", "c.png": "c.png", "c.jpg": "c.jpg.png"}


def test_the_run_root_is_keyed_by_model_version_and_direction():
    assert run_root(MODEL, "BtoA") == "horses/v3/BtoA"
    local = ModelIdentity(name="export", version="sha-0123456789ab", uri="/m/export", resolved_uri="/m/export")
    assert run_root(local, "AtoB") == "export/sha-0123456789ab/AtoB"


def test_only_new_and_changed_images_are_work():
    inputs = [StoredObject("same.png", 1, "e1"), StoredObject("changed.png", 1, "new"),
              StoredObject("new.jpg", 1, "e3"), StoredObject("bad.png", 1, "e4"), StoredObject("notes.txt", 1, "e5"),
              StoredObject(".hidden.png", 1, "e6")]
    state = {"same.png": record("same.png", "e1"), "changed.png": record("changed.png", "old"),
             "bad.png": record("bad.png", "e4", "quarantined"), "gone.png": record("gone.png", "e9")}
    plan = plan_work(inputs, state)
    assert [(item.source, item.previous) for item in plan.work] == [("changed.png", "translated"), ("new.jpg", "")]
    assert [r.source for r in plan.unchanged] == ["same.png", "bad.png"]  # a bad input stays quarantined
    assert plan.removed == ["gone.png"]


def test_ledgers_written_after_the_manifest_override_it_newest_last():
    manifest = BatchManifest(model=MODEL, direction="AtoB", input_uri="s3://b/in", output_root="s3://b/out",
                             records={"a.png": record("a.png", "v1")})
    ledgers = [Ledger(records=[record("a.png", "v3", at="2026-12-03T00:00:00")]),
               Ledger(records=[record("a.png", "v2", at="2026-12-02T00:00:00"), record("b.png", "b1")])]
    state = current_state(manifest, ledgers)
    assert (state["a.png"].etag, set(state)) == ("v3", {"a.png", "b.png"})
    assert current_state(None, []) == {}


def test_one_actor_per_gpu_else_per_cpu_share_never_more_than_batches():
    assert pool_size(actors=None, use_gpu=None, cpus_per_actor=1, batches=10, cluster={"CPU": 16, "GPU": 2}).actors == 2
    cpu = pool_size(actors=None, use_gpu=None, cpus_per_actor=2, batches=10, cluster={"CPU": 8})
    assert (cpu.actors, cpu.gpus_per_actor) == (4, 0.0)
    assert pool_size(actors=None, use_gpu=False, cpus_per_actor=1, batches=3, cluster={"CPU": 8, "GPU": 1}).actors == 3
    assert pool_size(actors=5, use_gpu=None, cpus_per_actor=1, batches=2, cluster={"CPU": 8}).actors == 2
    with pytest.raises(ValueError, match="no GPU"):
        pool_size(actors=None, use_gpu=True, cpus_per_actor=1, batches=2, cluster={"CPU": 8})


@pytest.mark.parametrize(("source", "output"), [("s3://b/in", "s3://b/in/out"), ("s3://b/data/in", "s3://b/data"),
                                                ("s3://b", "s3://b/out")])
def test_an_output_that_overlaps_the_input_is_refused(source: str, output: str):
    with pytest.raises(ValueError, match="overlap"):
        batch_settings(source, output, "models:/m@champion", env={})


def test_neighbouring_prefixes_do_not_overlap_and_the_model_defaults_to_the_champion():
    settings = batch_settings("s3://b/in", "s3://b/input-translated", None, env={"MLFLOW_TRACKING_URI": "http://m"})
    assert settings.model_uri == "models:/cyclegan@champion" and settings.services.tracking_uri == "http://m"
    with pytest.raises(ValueError, match="direction"):
        batch_settings("s3://b/in", "s3://b/out", None, env={}, options=translate_options(direction="sideways"))


def test_int8_is_refused_by_the_batch_job_saying_why():
    with pytest.raises(ValueError, match="precision int8 calibrates on images of the model's input domain, which the "
                                         "batch job does not pick for its actors"):
        batch_settings("s3://b/in", "s3://b/out", None, env={}, options=translate_options(precision="int8"))
