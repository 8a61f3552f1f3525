"""MLflow: the session every MLflow call goes through (``session``: clients, retries, the probe) and
the pipeline's live run (``run``). Below the stages: registry, training and serving use it."""
