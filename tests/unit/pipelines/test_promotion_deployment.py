"""prefect.yaml's rollout-champion/on-promotion against the receiver's events and the flow: each
trigger expects an event the receiver emits, matches its resource, and its parameter templates render
from that event's payload into parameters the flow takes; the reconcile trigger passes no version."""

from __future__ import annotations

import fnmatch
import inspect
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml

from pipelines.flows.rollout import rollout_champion
from pipelines.promotion import events

PREFECT_YAML = Path(__file__).resolve().parents[3] / "prefect.yaml"


def deployment() -> dict[str, Any]:
    (found,) = [d for d in yaml.safe_load(PREFECT_YAML.read_text())["deployments"] if d["name"] == "on-promotion"]
    return found


def trigger_for(event_name: str) -> dict[str, Any]:
    (trigger,) = [t for t in deployment()["triggers"] if event_name in t["expect"]]
    return trigger


def rendered(trigger: dict[str, Any], event: Any) -> dict[str, Any]:
    context = {"event": event.model_dump(mode="json")}
    return {key: jinja2.Template(value, undefined=jinja2.StrictUndefined).render(context)
            for key, value in trigger["parameters"].items()}


@pytest.mark.parametrize("event", [events.alias_moved("cyclegan", "champion", "7", "0123abcd-delivery"),
                                   events.reconcile("cyclegan", "champion", triggered_by="receiver-start")],
                         ids=["alias-moved", "reconcile"])
def test_each_receiver_event_has_a_trigger_whose_parameters_the_flow_takes(event: Any) -> None:
    trigger = trigger_for(event.event)
    assert all(fnmatch.fnmatchcase(event.resource[key], pattern) for key, pattern in trigger["match"].items())
    parameters = rendered(trigger, event)
    assert set(parameters) <= set(inspect.signature(rollout_champion.fn).parameters)
    assert parameters["model_name"] == "cyclegan" and parameters["alias"] == "champion"
    assert parameters.get("version") == ("7" if event.event == events.ALIAS_MOVED else None)


def test_the_deployment_queues_rollouts_and_reconciles_on_a_schedule() -> None:
    found = deployment()
    assert found["entrypoint"] == "pipelines/flows/rollout.py:rollout_champion"
    assert found["concurrency_limit"] == 1
    assert [s.get("active", True) for s in found["schedules"]] == [True]
    assert set(found["parameters"]) <= set(inspect.signature(rollout_champion.fn).parameters)
