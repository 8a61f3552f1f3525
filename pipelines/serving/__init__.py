"""The model server the project runs (``cyclegan serve``): MLflow's scoring contract, with the served
version following the rollout.

A forwarding front (``front``) answers ``POST /invocations``, ``/ping``, ``/health``, ``/version`` by
passing them to a real ``mlflow models serve -m models:/<name>/<version> --env-manager local`` on a
loopback port (``backend``), and ``GET /served-version`` itself. The front polls the registered-model
tag ``rollout.<alias>.version`` (written by the ``rollout-champion`` flow only) and switches to the
version it names (``switch`` decides; ``server`` starts the new backend, waits for its ``/ping``,
switches, then stops the old one). Before any rollout is recorded it serves the alias's version.
"""
