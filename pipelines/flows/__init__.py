"""The Prefect flows: ``train`` (train-cyclegan), ``translate`` (translate-cyclegan), ``rollout``
(rollout-champion), ``demo`` (``make demo``), with the helpers they share in ``common`` and the
train flow's assets in ``lineage``. The top layer below the CLI: thin orchestration over the stages."""
