"""The production stack's authentication against real servers started with it on:

- a `mlflow server --app-name basic-auth` process with infra/docker/mlflow-basic-auth.ini (SQLite in
  tmp), its users and grants made by `python -m pipelines.registry.access`;
- a `prefect server start` process with PREFECT_SERVER_API_AUTH_STRING and its own PREFECT_HOME.

The pipeline registers and the flow runs with the pipeline's credentials; requests without them
(registering a version, moving an alias, creating a flow run, the events websocket) are refused.
"""

from __future__ import annotations

import base64
import configparser
import json
import logging
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from pipelines.registry.access import Credentials
from tests.conftest import _stop_process_group, drain_prefect_queues, free_port, wait_http
from tests.integration.test_registry import export_tiny_model, make_config, make_report, make_train

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
AUTH_INI = REPO / "infra" / "docker" / "mlflow-basic-auth.ini"
MODEL = "auth-cyclegan"
FLOW_MODEL = "auth-flow"


class AuthServer(NamedTuple):
    uri: str
    admin: Credentials
    pipeline: Credentials
    promoter: Credentials
    log: Path


@pytest.fixture(scope="module")
def auth_mlflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthServer]:
    """A basic-auth MLflow server configured by the stack's ini, bootstrapped by the access module."""
    root = tmp_path_factory.mktemp("mlflow-auth")
    config = configparser.ConfigParser()
    config.read(AUTH_INI)
    config["mlflow"]["database_uri"] = f"sqlite:///{root / 'basic_auth.db'}"
    # The stack leaves MLflow's credential cache off (a revoked password stops working at once on every
    # server worker); here each request would pay a PBKDF2 check (~1 s on a loaded 2-core host), minutes
    # over the module. MLflow drops a user's cached credentials when the user is changed through the API.
    config["mlflow"]["auth_cache_ttl_seconds"] = "300"
    with open(root / "basic_auth.ini", "w") as handle:
        config.write(handle)
    admin = Credentials("admin", "admin-" + os.urandom(8).hex())
    pipeline = Credentials("cyclegan-pipeline", "pipeline-" + os.urandom(8).hex())
    promoter = Credentials("cyclegan-promoter", "promoter-" + os.urandom(8).hex())
    port = free_port()
    env = {**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(root / "basic_auth.ini"),
           "MLFLOW_AUTH_ADMIN_USERNAME": admin.username, "MLFLOW_AUTH_ADMIN_PASSWORD": admin.password,
           "MLFLOW_FLASK_SERVER_SECRET_KEY": os.urandom(16).hex()}
    cmd = [str(BIN / "mlflow"), "server", "--app-name", "basic-auth",
           "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts"),
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    log = root / "server.log"
    with open(log, "wb") as handle:
        process = subprocess.Popen(cmd, env=env, cwd=root, stdout=handle, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{uri}/health", timeout_s=300, process=process)
        bootstrap = {**os.environ, "MLFLOW_TRACKING_URI": uri,
                     "MLFLOW_AUTH_ADMIN_USERNAME": admin.username, "MLFLOW_AUTH_ADMIN_PASSWORD": admin.password,
                     "MLFLOW_PIPELINE_USERNAME": pipeline.username, "MLFLOW_PIPELINE_PASSWORD": pipeline.password,
                     "MLFLOW_PROMOTER_USERNAME": promoter.username, "MLFLOW_PROMOTER_PASSWORD": promoter.password}
        for attempt in range(2):  # the second run proves the bootstrap is idempotent
            done = subprocess.run([sys.executable, "-m", "pipelines.registry.access", MODEL, FLOW_MODEL],
                                  env=bootstrap, capture_output=True, text=True, timeout=300, check=False)
            output = done.stdout + done.stderr
            assert done.returncode == 0, output
            assert not any(c.password in output for c in (admin, pipeline, promoter)), "a password was printed"
            assert ("already granted" in output) == (attempt == 1), output
        yield AuthServer(uri, admin, pipeline, promoter, log)
    finally:
        _stop_process_group(process)


def rest(uri: str, path: str, body: dict[str, Any] | None = None, *, user: Credentials | None = None,
         method: str = "POST") -> int:
    """HTTP status of one MLflow REST call (no retries)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(uri + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    if user is not None:
        token = base64.b64encode(f"{user.username}:{user.password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def as_user(monkeypatch: pytest.MonkeyPatch, user: Credentials | None) -> None:
    """The standard variables MLflow's client reads for basic auth (what a deployment sets)."""
    for name, value in (("MLFLOW_TRACKING_USERNAME", user and user.username),
                        ("MLFLOW_TRACKING_PASSWORD", user and user.password)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)


@pytest.fixture(scope="module")
def registered(auth_mlflow: AuthServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two versions registered by the pipeline identity (the second wins the gate), logs captured."""
    from pipelines.registry import register_model

    root = tmp_path_factory.mktemp("auth-models")
    monkeypatch = pytest.MonkeyPatch()
    as_user(monkeypatch, auth_mlflow.pipeline)
    handler = logging.Handler()
    records: list[str] = []
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger().addHandler(handler)
    previous_level = logging.getLogger().level
    logging.getLogger().setLevel(logging.DEBUG)
    try:
        config = make_config(MODEL, auth_mlflow.uri)
        refs = [register_model(config, make_train(export_tiny_model(root / name, seed), f"auth-{name}"),
                               make_report(psnr)) for name, seed, psnr in (("one", 1, 20.0), ("two", 2, 25.0))]
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(previous_level)
        monkeypatch.undo()
    return {"refs": refs, "logs": records}


def test_the_pipeline_identity_registers_and_its_gate_moves_champion(auth_mlflow, registered, monkeypatch) -> None:
    from mlflow.tracking import MlflowClient

    first, second = registered["refs"]
    assert (first.version, second.version) == ("1", "2")
    assert second.promoted and "champion" in second.aliases
    as_user(monkeypatch, auth_mlflow.pipeline)
    assert MlflowClient(auth_mlflow.uri, auth_mlflow.uri).get_model_version_by_alias(MODEL, "champion").version == "2"


def test_no_password_reaches_the_logs(auth_mlflow, registered) -> None:
    text = "\n".join(registered["logs"])
    assert "registered version" in text, "the registration's log lines were not captured"
    server_log = auth_mlflow.log.read_text(errors="replace")
    for user in (auth_mlflow.admin, auth_mlflow.pipeline, auth_mlflow.promoter):
        assert user.password not in text and user.password not in server_log


def test_requests_without_credentials_are_refused(auth_mlflow, registered) -> None:
    uri = auth_mlflow.uri
    create_version = ("/api/2.0/mlflow/model-versions/create", {"name": MODEL, "source": "models:/m-0"})
    move_alias = ("/api/2.0/mlflow/registered-models/alias", {"name": MODEL, "alias": "champion", "version": "1"})
    wrong = Credentials(auth_mlflow.pipeline.username, "not-the-password")
    for path, body in (create_version, move_alias):
        assert rest(uri, path, body) == 401, f"{path} without credentials"
        assert rest(uri, path, body, user=wrong) == 401, f"{path} with a wrong password"
    assert rest(uri, "/api/2.0/mlflow/registered-models/get?name=" + MODEL, method="GET") == 401
    assert rest(uri, "/health", method="GET") == 200  # what the probes and health checks use


def test_registering_without_credentials_fails_with_the_fix(auth_mlflow, registered, tmp_path, monkeypatch) -> None:
    from pipelines.registry import RegistryError, register_model

    as_user(monkeypatch, None)
    train = make_train(export_tiny_model(tmp_path / "three", 3), "auth-three")
    with pytest.raises(RegistryError, match="401.*MLFLOW_TRACKING_USERNAME") as refused:
        register_model(make_config(MODEL, auth_mlflow.uri), train, make_report(30.0))
    assert not refused.value.transient


def test_a_signed_in_user_without_grants_can_neither_read_nor_move_aliases(auth_mlflow, registered) -> None:
    from pipelines.registry.access import ensure_user

    nobody = Credentials("nobody", "nobody-" + os.urandom(6).hex())
    ensure_user(auth_mlflow.uri, auth_mlflow.admin, nobody)
    uri = auth_mlflow.uri
    assert rest(uri, "/api/2.0/mlflow/registered-models/get?name=" + MODEL, user=nobody, method="GET") == 403
    move = {"name": MODEL, "alias": "champion", "version": "1"}
    assert rest(uri, "/api/2.0/mlflow/registered-models/alias", move, user=nobody) == 403


def test_the_promoter_downloads_the_champion_and_an_ungranted_user_cannot(auth_mlflow, registered, tmp_path,
                                                                            monkeypatch) -> None:
    from pipelines.registry import RegistryError, download_model
    from pipelines.registry.access import ensure_user

    as_user(monkeypatch, auth_mlflow.promoter)
    folder = download_model(f"models:/{MODEL}@champion", tmp_path / "champion", tracking_uri=auth_mlflow.uri)
    assert (folder / "G_AB").is_dir() and (folder / "G_BA").is_dir()
    nobody = Credentials("nobody-download", "nobody-" + os.urandom(6).hex())
    ensure_user(auth_mlflow.uri, auth_mlflow.admin, nobody)
    as_user(monkeypatch, nobody)
    with pytest.raises(RegistryError, match="403"):
        download_model(f"models:/{MODEL}@champion", tmp_path / "refused", tracking_uri=auth_mlflow.uri)
    assert not (tmp_path / "refused").exists()


def test_only_the_promoter_deletes_and_it_moves_champion_by_hand(auth_mlflow, registered, monkeypatch) -> None:
    from pipelines.registry import RegistryError, promote

    uri = auth_mlflow.uri
    delete = ("/api/2.0/mlflow/model-versions/delete", {"name": MODEL, "version": "1"})
    assert rest(uri, *delete, user=auth_mlflow.pipeline, method="DELETE") == 403
    assert rest(uri, "/api/2.0/mlflow/registered-models/delete", {"name": MODEL}, user=auth_mlflow.pipeline,
                method="DELETE") == 403
    as_user(monkeypatch, auth_mlflow.promoter)
    ref = promote(MODEL, 1, tracking_uri=uri)
    assert ref.version == "1" and "champion" in ref.aliases
    as_user(monkeypatch, None)
    with pytest.raises(RegistryError, match=r"401.*MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"):
        promote(MODEL, 2, tracking_uri=uri)
    as_user(monkeypatch, auth_mlflow.pipeline)
    with pytest.raises(RegistryError, match="403"):  # the pipeline identity holds no grant on this model
        promote("not-bootstrapped", 1, tracking_uri=uri)


# --- Prefect ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def auth_prefect(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A Prefect server with basic auth on; returns its API URL and auth string."""
    home = tmp_path_factory.mktemp("prefect-auth-home")
    port = free_port()
    auth = "cyclegan:" + os.urandom(8).hex()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_ENABLED": "false", "PREFECT_SERVER_API_AUTH_STRING": auth}
    env.pop("PREFECT_API_URL", None)
    with open(home / "server.log", "wb") as log:
        process = subprocess.Popen(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/api/health", timeout_s=240, process=process)
        yield {"url": f"http://127.0.0.1:{port}/api", "auth": auth, "log": str(home / "server.log")}
        drain_prefect_queues()  # the in-process flows' log and event workers are bound to this server
    finally:
        _stop_process_group(process)


def prefect_client(api_url: str, auth: str | None) -> Any:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url, PREFECT_API_AUTH_STRING: auth}):
        return get_client(sync_client=True)


def test_creating_a_flow_run_needs_the_auth_string(auth_prefect) -> None:
    from prefect import flow
    from prefect.exceptions import PrefectHTTPStatusError

    @flow(name="auth-probe")
    def probe() -> None:
        return None

    with prefect_client(auth_prefect["url"], auth_prefect["auth"]) as client:
        created = client.create_flow_run(probe, name="with-auth")
        assert client.read_flow_run(created.id).name == "with-auth"
    for auth in (None, "cyclegan:wrong"):
        with prefect_client(auth_prefect["url"], auth) as client, pytest.raises(PrefectHTTPStatusError) as refused:
            client.create_flow_run(probe, name="refused")
        assert refused.value.response.status_code == 401
    flow_id = str(created.flow_id)
    body = json.dumps({"flow_id": flow_id, "name": "anonymous"}).encode()
    request = urllib.request.Request(auth_prefect["url"] + "/flow_runs/", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as anonymous:
        urllib.request.urlopen(request, timeout=30)
    assert anonymous.value.code == 401
    with urllib.request.urlopen(auth_prefect["url"] + "/health", timeout=30) as health:  # the health checks'
        assert health.status == 200


def test_the_events_websocket_refuses_a_client_without_the_auth_string(auth_prefect) -> None:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    url = auth_prefect["url"].replace("http://", "ws://") + "/events/out"
    for token in (None, "cyclegan:wrong"):
        with connect(url, subprotocols=["prefect"], open_timeout=30) as socket:
            socket.send(json.dumps({"type": "auth", "token": token}))
            with pytest.raises(ConnectionClosed) as closed:
                socket.recv(timeout=30)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    with connect(url, subprotocols=["prefect"], open_timeout=30) as socket:
        socket.send(json.dumps({"type": "auth", "token": auth_prefect["auth"]}))
        assert json.loads(socket.recv(timeout=30))["type"] == "auth_success"


@pytest.mark.slow
def test_the_demo_flow_runs_against_the_authenticated_servers(
    auth_mlflow, auth_prefect, ray_local, s3_server, s3_bucket, synthetic_dataset, tmp_path, monkeypatch
) -> None:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    from pipelines.flows.train import train_cyclegan
    from pipelines.ingest import upload_folder
    from tests.flow_configs import tiny_flow_config

    upload_folder(synthetic_dataset, f"s3://{s3_bucket}/synth")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", auth_mlflow.uri)
    as_user(monkeypatch, auth_mlflow.pipeline)
    config = tiny_flow_config(f"s3://{s3_bucket}/synth", tmp_path, model_name=FLOW_MODEL, experiment="auth-flow")
    with temporary_settings(updates={PREFECT_API_URL: auth_prefect["url"],
                                     PREFECT_API_AUTH_STRING: auth_prefect["auth"]}):
        state = train_cyclegan(config, return_state=True)
    outcome = state.result()
    assert outcome.model is not None and "champion" in outcome.model.aliases
    # The task runs reached the authenticated server (their states travel over the events websocket).
    with prefect_client(auth_prefect["url"], auth_prefect["auth"]) as client:
        flow_run = client.read_flow_run(state.state_details.flow_run_id)
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id])))
    assert flow_run.state.is_completed()
    assert {run.name.rsplit("-", 1)[0] for run in runs} >= {"ingest", "train", "evaluate", "register"}
    assert auth_prefect["auth"] not in Path(auth_prefect["log"]).read_text(errors="replace")
    assert auth_mlflow.pipeline.password not in auth_mlflow.log.read_text(errors="replace")
