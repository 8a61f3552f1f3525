"""KubeRay RayCluster/RayJob against a focused JSON schema of the v1 CRDs (infra/schemas/) plus the
checks a schema cannot express; the Ray cluster launcher config against Ray's own validator."""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.unit.infra.manifests import (
    KUBERAY_SCHEMA,
    LAUNCHER,
    PROJECT_IMAGE,
    RAY_DIR,
    REPO,
    kubernetes_documents,
    ray_cluster_document,
)

# --- Kubernetes / KubeRay -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kuberay_validators() -> dict[str, jsonschema.Draft202012Validator]:
    schema = json.loads(KUBERAY_SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return {
        kind: jsonschema.Draft202012Validator({"$defs": schema["$defs"], "$ref": f"#/$defs/{ref}"})
        for kind, ref in (("RayCluster", "rayCluster"), ("RayJob", "rayJob"))
    }


def test_kuberay_manifests_validate_against_the_crd_schema(kuberay_validators) -> None:
    kinds = []
    for path, doc in kubernetes_documents():
        kinds.append(doc["kind"])
        if doc["kind"] in kuberay_validators:
            errors = sorted(
                kuberay_validators[doc["kind"]].iter_errors(doc), key=lambda e: list(e.absolute_path)
            )
            assert not errors, f"{path}: " + "; ".join(
                f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors
            )
        else:
            assert doc["apiVersion"] == "v1" and doc["kind"] in ("ConfigMap", "Namespace"), (
                f"{path}: {doc['kind']}"
            )
    assert kinds.count("RayCluster") == 1 and kinds.count("RayJob") == 1


def test_kuberay_schema_rejects_what_the_operator_would(kuberay_validators) -> None:
    cluster = ray_cluster_document()
    broken = copy.deepcopy(cluster)
    broken["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0  # must be a string
    del broken["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["image"]
    broken["spec"]["workerGroupSpecs"][0]["maxReplica"] = 3  # typo of maxReplicas
    broken["apiVersion"] = "ray.io/v1alpha1"
    messages = " | ".join(e.message for e in kuberay_validators["RayCluster"].iter_errors(broken))
    for expected in (
        "0 is not of type 'string'",
        "'image' is a required property",
        "'maxReplica' was unexpected",
        "'ray.io/v1' was expected",
    ):
        assert expected in messages


def test_gpu_worker_groups_autoscale_within_bounds_and_request_gpus() -> None:
    cluster = ray_cluster_document()
    spec = cluster["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    head_limits = spec["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert "nvidia.com/gpu" not in head_limits, "the head is a CPU node"
    assert spec["headGroupSpec"]["rayStartParams"].get("num-cpus") == "0", "no training work on the head"
    gpu_groups = 0
    for group in spec["workerGroupSpecs"]:
        name = group["groupName"]
        assert group["minReplicas"] <= group.get("replicas", group["minReplicas"]) <= group["maxReplicas"], (
            f"worker group {name}: need minReplicas <= replicas <= maxReplicas"
        )
        for container in group["template"]["spec"]["containers"]:
            limits, requests = container["resources"]["limits"], container["resources"].get("requests", {})
            if "nvidia.com/gpu" in limits:
                gpu_groups += 1
                assert int(limits["nvidia.com/gpu"]) >= 1
                # Extended resources cannot be overcommitted: Kubernetes rejects requests != limits.
                assert str(requests.get("nvidia.com/gpu", limits["nvidia.com/gpu"])) == str(
                    limits["nvidia.com/gpu"]
                )
    assert gpu_groups >= 1, "the RayCluster needs a GPU worker group (nvidia.com/gpu limits)"


def test_rayjob_trains_on_the_raycluster_with_a_valid_mounted_config(tmp_path: Path) -> None:
    docs = [doc for _, doc in kubernetes_documents()]
    cluster = next(doc for doc in docs if doc["kind"] == "RayCluster")
    job = next(doc for doc in docs if doc["kind"] == "RayJob")
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    assert job["metadata"]["namespace"] == cluster["metadata"]["namespace"]
    entrypoint = shlex.split(job["spec"]["entrypoint"])
    assert entrypoint[:2] == ["cyclegan", "train"]
    config_path = Path(entrypoint[entrypoint.index("--config") + 1])
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]
    mount = next(
        m for m in head["containers"][0]["volumeMounts"] if config_path.parent == Path(m["mountPath"])
    )
    volume = next(v for v in head["volumes"] if v["name"] == mount["name"])
    config_map = next(
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == volume["configMap"]["name"]
    )
    # The mounted PipelineConfig must load exactly as `cyclegan train --config` will load it.
    from pipelines.config import load_pipeline_config

    local = tmp_path / config_path.name
    local.write_text(config_map["data"][config_path.name])
    config = load_pipeline_config(local)
    assert config.run.storage_path.startswith("s3://"), (
        "a multi-node cluster needs shared (s3://) checkpoints"
    )
    assert config.cache_dir.is_absolute(), "every node must ingest into the same absolute cache_dir"
    assert config.scaling.use_gpu


def test_kustomizations_list_existing_files() -> None:
    for kustomization in RAY_DIR.rglob("kustomization.yaml"):
        spec = yaml.safe_load(kustomization.read_text())
        for resource in spec["resources"]:
            assert (kustomization.parent / resource).is_file(), (
                f"{kustomization}: missing resource {resource}"
            )
        assert {image["name"] for image in spec.get("images", [])} == {PROJECT_IMAGE}


# --- Ray cluster launcher -------------------------------------------------------------------------


def test_aws_launcher_config_passes_rays_own_validation() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(LAUNCHER.read_text())
    validate_config(prepare_config(copy.deepcopy(config)))  # Ray's JSON schema + node type checks
    assert config["provider"]["type"] == "aws" and config["provider"]["region"]
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "the head is a CPU node"
    gpu_types = {name: t for name, t in types.items() if t.get("resources", {}).get("GPU", 0) >= 1}
    assert gpu_types, "the launcher needs GPU worker node types"
    for name, node_type in gpu_types.items():
        assert re.match(r"^(g5|g6|p4d|p5)\.", node_type["node_config"]["InstanceType"]), name
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"] <= config["max_workers"], name
    for target, source in config["file_mounts"].items():
        assert (REPO / (source + ".example")).is_file(), (
            f"{LAUNCHER}: file_mounts source {source} has no .example"
        )
        assert source.split("/")[-1] in (RAY_DIR / "aws" / ".gitignore").read_text()
        assert any(target in command for command in config["head_start_ray_commands"]), (
            "env file never sourced"
        )
