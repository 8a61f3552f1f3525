"""``cyclegan serve``: the registered model on Ray Serve, the served version following the rollout.

``settings`` (what is served, how: ``ServeSettings``), ``app`` (the application: front + rollout watcher;
``build_app`` for Serve configs and KubeRay RayService), ``front`` (the HTTP routes) and ``scoring``
(MLflow's scoring JSON), ``watcher`` (follows ``rollout.<alias>.version``, redeploys the model replicas),
``model`` (the replicas: load, batch, translate), ``server`` (the ``cyclegan serve`` process), ``served``
(asking a running server what it serves: the rollout flow's wait). ARCHITECTURE.md, "Serving".
"""
