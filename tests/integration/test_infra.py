"""The pipeline's Ray switch against a real cluster, secured as the production stack secures it.

A ``ray start --head`` process (2 CPUs, no dashboard) runs with token authentication, as the compose
stack's Ray nodes do (``RAY_AUTH_MODE=token`` + a shared ``RAY_AUTH_TOKEN``). A driver process then runs
the pipeline's own connection code (``pipelines.train.connect_ray``) with only environment variables
pointing it at the cluster, exactly like the Prefect worker container. Drivers run in child processes
so they never meet the in-process cluster of the ``ray_local`` fixture; the head runs in its own process
group and is stopped through it (``ray stop`` would stop every Ray on the machine).
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RAY_BIN = Path(sys.executable).with_name("ray")

DRIVER = """
import json
import ray
from pipelines.config import PipelineConfig, resolve
from pipelines.train import connect_ray

try:
    local = connect_ray(resolve(PipelineConfig(dataset_uri="s3://bucket/prefix")))
except Exception as exc:
    print(json.dumps({"error": type(exc).__name__, "message": str(exc)[:500]}))
    raise SystemExit(0)

@ray.remote(num_cpus=1)
def double_where(x):
    return x * 2, ray.get_runtime_context().get_node_id()

doubled, node = ray.get(double_where.remote(21))
print(json.dumps({
    "local": local,
    "doubled": doubled,
    "task_node": node,
    "cluster_nodes": [n["NodeID"] for n in ray.nodes() if n["Alive"]],
    "cpus": ray.cluster_resources().get("CPU"),
    "gcs_address": ray.get_runtime_context().gcs_address,
}))
ray.shutdown()
"""


def run_driver(env: dict[str, str]) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", DRIVER],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, f"driver failed:\n{result.stdout}\n{result.stderr[-4000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1]) | {"stderr": result.stderr}


def test_ray_address_attaches_the_pipeline_to_the_running_cluster(ray_head: dict[str, str]) -> None:
    outcome = run_driver(ray_head)
    assert "error" not in outcome, {k: v for k, v in outcome.items() if k != "stderr"} | {
        "stderr": outcome["stderr"][-2000:]
    }
    assert outcome["local"] is False, "with RAY_ADDRESS set, connect_ray must not start a local Ray"
    assert outcome["doubled"] == 42
    # The driver joined the existing cluster instead of adding a node: the task ran on the head's node.
    assert outcome["gcs_address"].rsplit(":", 1)[1] == ray_head["RAY_ADDRESS"].rsplit(":", 1)[1]
    assert outcome["cluster_nodes"] == [outcome["task_node"]]
    assert outcome["cpus"] == 2.0  # the head was started with --num-cpus=2


def test_a_driver_without_the_cluster_token_is_refused(ray_head: dict[str, str]) -> None:
    outcome = run_driver(ray_head | {"RAY_AUTH_TOKEN": secrets.token_hex(32)})
    assert outcome.get("error") == "ConnectionError", (
        f"a wrong RAY_AUTH_TOKEN must not reach the cluster: {outcome}"
    )
    assert "InvalidAuthToken" in outcome["stderr"], outcome["stderr"][-2000:]
