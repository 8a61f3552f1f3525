"""Promotion that acts: moving a watched alias (``champion``) in the MLflow registry rolls the new
version out, with no one touching Prefect.

MLflow's model-registry webhook (``webhook``) posts ``model_version_alias.created`` to the receiver
(``receiver``), which verifies the HMAC signature, refuses replays and unwatched models, and emits a
Prefect event (``events``); a deployment trigger in prefect.yaml runs the ``rollout-champion`` flow
(``flow``), which re-reads the alias, skips stale or duplicate requests (``decision``), runs the
``translate-cyclegan`` rollout per target and records the rollout in MLflow (``state``). The receiver's
start and a schedule run the same flow without a version: it reconciles the recorded rollout with the
alias, so nothing is lost while a part is down.
"""
