"""Batch translation of an S3 prefix (or a local folder) with a registered model on Ray Data.

``translate_batch(batch_settings(...))`` is the job (``pipelines.flows.translate`` and ``cyclegan translate
s3://...`` call it): ``planning`` (layout, state, what to do), ``stores`` (S3 or local I/O),
``ray_job`` (the actor pool), ``job`` (the run), ``artifacts`` (the Prefect summary).
"""

from pipelines.batch.job import (
    BatchResult,
    BatchSettings,
    QuarantineToleranceError,
    batch_settings,
    default_model_uri,
    translate_batch,
)

__all__ = ["BatchResult", "BatchSettings", "QuarantineToleranceError", "batch_settings", "default_model_uri",
           "translate_batch"]
