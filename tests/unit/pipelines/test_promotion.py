"""The promotion path's pure parts: MLflow's webhook signature, replay and duplicate refusal, the
receiver's decisions (watched model and alias, payload checks) and the event it emits, the settings'
errors, and what a rollout run decides from the requested, current and recorded versions."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest

from pipelines.promotion import events
from pipelines.promotion.decision import decide
from pipelines.promotion.receiver import Receiver
from pipelines.promotion.settings import PromotionError, ReceiverSettings, receiver_settings_from_env
from pipelines.promotion.signature import DeliveryLedger, Refused, sign, verify

SECRET = "unit-test-webhook-secret"
NOW = 1_800_000_000.0


def alias_body(name: str = "cyclegan", alias: str = "champion", version: str = "3") -> bytes:
    return json.dumps({"entity": "model_version_alias", "action": "created", "timestamp": "2026-12-02T05:00:00Z",
                       "data": {"name": name, "alias": alias, "version": version}}).encode()


def signed(body: bytes, *, secret: str = SECRET, delivery_id: str | None = None, at: float = NOW) -> dict[str, str]:
    delivery_id = delivery_id or str(uuid.uuid4())
    timestamp = str(int(at))
    return {"X-MLflow-Delivery-Id": delivery_id, "X-MLflow-Timestamp": timestamp,
            "X-MLflow-Signature": sign(secret, delivery_id, timestamp, body), "Content-Type": "application/json"}


class Sent(list):
    def __call__(self, *sent: object) -> None:
        self.extend(sent)


def receiver(**settings: object) -> tuple[Receiver, Sent]:
    sent = Sent()
    values = {"secret": SECRET, "models": ("cyclegan",)} | settings
    return Receiver(ReceiverSettings.model_validate(values), send=sent, clock=lambda: NOW), sent


# --- signature -------------------------------------------------------------------------------------


def test_the_signature_is_the_one_mlflow_computes() -> None:
    from mlflow.webhooks.delivery import _generate_hmac_signature

    body = alias_body()
    assert sign(SECRET, "d-1", "1800000000", body) == _generate_hmac_signature(SECRET, "d-1", "1800000000",
                                                                               body.decode())


def test_a_correctly_signed_fresh_delivery_verifies() -> None:
    body = alias_body()
    headers = signed(body, delivery_id="d-ok", at=NOW - 30)
    assert verify(SECRET, {k.lower(): v for k, v in headers.items()}, body, now=NOW).delivery_id == "d-ok"


@pytest.mark.parametrize("tamper", ["body", "secret", "no-signature"])
def test_a_forged_or_unsigned_delivery_is_refused(tamper: str) -> None:
    body = alias_body()
    headers = signed(body, secret="another-secret" if tamper == "secret" else SECRET)
    if tamper == "no-signature":
        del headers["X-MLflow-Signature"]
    sent_body = alias_body(version="9") if tamper == "body" else body
    with pytest.raises(Refused) as refused:
        verify(SECRET, headers, sent_body, now=NOW)
    assert refused.value.status == 401
    assert SECRET not in refused.value.reason
    if "X-MLflow-Signature" in headers:
        assert headers["X-MLflow-Signature"].split(",", 1)[1] not in refused.value.reason


def test_a_delivery_outside_the_replay_window_is_refused() -> None:
    body = alias_body()
    with pytest.raises(Refused, match="replay window"):
        verify(SECRET, signed(body, at=NOW - 301), body, now=NOW, window_s=300)


def test_a_delivery_id_is_claimed_once_and_again_after_a_release() -> None:
    ledger = DeliveryLedger(window_s=300)
    body = alias_body()
    delivery = verify(SECRET, signed(body, delivery_id="d-1"), body, now=NOW)
    assert ledger.claim(delivery, now=NOW)
    assert not ledger.claim(delivery, now=NOW + 1)
    ledger.release(delivery)
    assert ledger.claim(delivery, now=NOW + 2)


# --- receiver --------------------------------------------------------------------------------------


def test_a_watched_alias_move_emits_one_event_with_the_version() -> None:
    rx, sent = receiver()
    body = alias_body(version="4")
    outcome = rx.handle(signed(body, delivery_id="0f1e2d3c-aaaa-bbbb-cccc-000000000001"), body)
    assert outcome.status == 200
    (event,) = sent
    assert event.event == events.ALIAS_MOVED
    assert event.resource.id == "mlflow.model.cyclegan" and event.resource["mlflow.alias"] == "champion"
    assert event.payload == {"model_name": "cyclegan", "alias": "champion", "version": "4",
                             "triggered_by": "mlflow-webhook:0f1e2d3c",
                             "delivery_id": "0f1e2d3c-aaaa-bbbb-cccc-000000000001"}
    # Prefect dedupes by event id: the same delivery gives the same id.
    assert event.id == events.alias_moved("cyclegan", "champion", "4", "0f1e2d3c-aaaa-bbbb-cccc-000000000001").id


def test_a_replayed_delivery_changes_nothing() -> None:
    rx, sent = receiver()
    body = alias_body()
    headers = signed(body)
    assert rx.handle(headers, body).status == 200
    assert rx.handle(headers, body).status == 409
    assert len(sent) == 1


def test_a_forged_delivery_emits_nothing_and_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    rx, sent = receiver()
    body = alias_body()
    headers = signed(body, secret="guessed")
    assert rx.handle(headers, body).status == 401
    assert sent == []
    assert "wrong signature" in caplog.text
    assert SECRET not in caplog.text and headers["X-MLflow-Signature"] not in caplog.text


@pytest.mark.parametrize(("name", "alias"), [("other-model", "champion"), ("cyclegan", "challenger")])
def test_an_unwatched_model_or_alias_emits_nothing(name: str, alias: str, caplog) -> None:
    rx, sent = receiver()
    body = alias_body(name=name, alias=alias)
    outcome = rx.handle(signed(body), body)
    assert outcome.status == 200 and "not watched" in outcome.message
    assert sent == [] and "not watched" in caplog.text


def test_a_signed_delivery_of_another_event_is_refused() -> None:
    rx, sent = receiver()
    body = json.dumps({"entity": "model_version", "action": "created", "data": {"name": "cyclegan"}}).encode()
    outcome = rx.handle(signed(body), body)
    assert outcome.status == 400 and "model_version_alias.created" in outcome.message
    assert sent == []


def test_when_prefect_is_unreachable_the_delivery_gets_503_and_its_retry_is_accepted() -> None:
    rx, sent = receiver()
    body = alias_body()
    headers = signed(body)

    def down(*_: object) -> None:
        raise ConnectionRefusedError("prefect is down")

    rx.send = down
    assert rx.handle(headers, body).status == 503
    rx.send = sent
    assert rx.handle(headers, body).status == 200  # MLflow's retry repeats the delivery id
    assert len(sent) == 1


def test_the_start_reconciliation_asks_for_every_watched_model_and_alias() -> None:
    rx, sent = receiver(models=("a", "b"), aliases=("champion", "canary"))
    assert rx.reconcile_all(triggered_by="receiver-start") == 4
    assert {(e.event, e.payload["model_name"], e.payload["alias"]) for e in sent} == {
        (events.RECONCILE, m, a) for m in ("a", "b") for a in ("champion", "canary")}
    assert all("version" not in e.payload for e in sent)


# --- settings --------------------------------------------------------------------------------------


def test_settings_name_the_missing_secret_and_models() -> None:
    with pytest.raises(PromotionError, match="CYCLEGAN_WEBHOOK_SECRET"):
        receiver_settings_from_env({"CYCLEGAN_PROMOTION_MODELS": "cyclegan"})
    with pytest.raises(PromotionError, match="CYCLEGAN_PROMOTION_MODELS"):
        receiver_settings_from_env({"CYCLEGAN_WEBHOOK_SECRET": SECRET})
    settings = receiver_settings_from_env({"CYCLEGAN_WEBHOOK_SECRET": SECRET, "CYCLEGAN_PROMOTION_MODELS": "a, b",
                                           "CYCLEGAN_PROMOTION_ALIASES": "champion,canary"}, port="9000")
    assert (settings.models, settings.aliases, settings.port) == (("a", "b"), ("champion", "canary"), 9000)
    assert SECRET not in repr(settings) and SECRET not in str(settings)


# --- decisions -------------------------------------------------------------------------------------


def test_a_move_to_a_new_version_rolls_it_out() -> None:
    decision = decide(model="m", alias="champion", requested="3", current="3", rolled_out="2")
    assert (decision.action, decision.version) == ("rollout", "3")


def test_a_stale_request_is_skipped() -> None:
    decision = decide(model="m", alias="champion", requested="2", current="3", rolled_out="1")
    assert (decision.action, decision.version) == ("skip", "2") and "stale" in decision.reason


def test_a_duplicate_request_is_skipped() -> None:
    decision = decide(model="m", alias="champion", requested="3", current="3", rolled_out="3")
    assert decision.action == "skip" and "already rolled out" in decision.reason


def test_a_reconcile_rolls_out_the_alias_when_the_record_differs() -> None:
    assert decide(model="m", alias="champion", requested=None, current="1", rolled_out="2").action == "rollout"
    assert decide(model="m", alias="champion", requested=None, current="2", rolled_out="2").action == "skip"
    assert decide(model="m", alias="champion", requested=None, current=None, rolled_out=None).action == "skip"


# --- HTTP ------------------------------------------------------------------------------------------


@pytest.fixture()
def http_receiver() -> Iterator[tuple[str, Sent]]:
    """The receiver's app on uvicorn on a loopback port, in a thread."""
    import threading
    import time

    import uvicorn

    from pipelines.clients.embedded import free_port
    from pipelines.promotion.receiver import receiver_app, server_config

    rx, sent = receiver()
    port = free_port()
    server = uvicorn.Server(server_config(receiver_app(rx), "127.0.0.1", port))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the receiver did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", sent
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def post(url: str, body: bytes, headers: dict[str, str]) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body, headers=headers), timeout=10) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code


def test_an_oversized_body_is_refused_before_it_is_read(http_receiver) -> None:
    url, sent = http_receiver
    body = b"x" * (64 * 1024 + 1)
    assert post(f"{url}/mlflow-webhook", body, signed(body)) == 413
    assert sent == []


def test_health_answers_and_other_paths_are_not_found(http_receiver) -> None:
    import urllib.request

    url, _ = http_receiver
    with urllib.request.urlopen(f"{url}/health", timeout=10) as answer:
        assert json.loads(answer.read()) == {"status": "ok", "models": ["cyclegan"], "aliases": ["champion"]}
    body = alias_body()
    assert post(f"{url}/elsewhere", body, signed(body)) == 404


def test_a_signed_delivery_over_http_is_answered_with_its_outcome(http_receiver) -> None:
    import urllib.request

    url, sent = http_receiver
    body = alias_body(version="5")
    request = urllib.request.Request(f"{url}/mlflow-webhook", data=body, headers=signed(body, delivery_id="d-http"))
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.headers["Content-Type"] == "application/json"
        document = json.loads(answer.read())
    (event,) = sent
    assert document == {"status": 200, "message": f"cyclegan@champion -> v5: event {events.ALIAS_MOVED} "
                                                  f"{event.id} sent"}
    assert post(f"{url}/mlflow-webhook", body, signed(body, delivery_id="d-http")) == 409  # the same delivery


def test_a_body_without_a_length_is_refused(http_receiver) -> None:
    import http.client

    url, sent = http_receiver
    connection = http.client.HTTPConnection(url.removeprefix("http://"), timeout=10)
    body = alias_body()
    connection.request("POST", "/mlflow-webhook", body=iter([body]), headers=signed(body), encode_chunked=True)
    answer = connection.getresponse()
    assert answer.status == 411 and json.loads(answer.read())["message"] == "body of unknown bytes (at most 65536)"
    assert sent == []
    connection.request("GET", "/mlflow-webhook")
    answer = connection.getresponse()
    assert (answer.status, json.loads(answer.read())) == (404, {"error": "no such path; POST /mlflow-webhook or "
                                                                         "GET /health"})
    connection.close()
