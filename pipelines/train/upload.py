"""How a worker hands a checkpoint folder to Ray Train: written locally, uploaded off the training path.

``CheckpointUploads.report`` writes nothing itself: the caller has written its part of the checkpoint
into an owned scratch folder (``cyclegan_core.atomic.scratch_folder``, locked while it exists), and this
reports it with ``ray.train.report(checkpoint_upload_mode=ASYNC)`` (``run.checkpoint_upload: async``,
the default) or ``SYNC``. The upload is Ray's own (``StorageContext.persist_current_checkpoint``,
pyarrow's copy to ``run.storage_path``); it runs in Ray's upload thread, which releases the scratch
folder when the copy ends, so a sweep never takes a folder still being uploaded and a folder is never
left behind by a finished upload. Ray reports a checkpoint to its controller only once every rank's
upload has finished: a worker killed mid-upload leaves a partial folder in storage that Ray never
recorded, and a resume takes the latest recorded one (``pipelines.train.resume`` skips a partial folder
too when it has to read the folders themselves).

At most one upload is in flight per worker: a checkpoint due while the previous one still uploads waits
for it (storage slower than the checkpoint cadence then shows as training time, and a worker never
holds more than two checkpoints on its local disk).
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import ray.train

logger = logging.getLogger(__name__)

UPLOAD_MODES = {"async": ray.train.CheckpointUploadMode.ASYNC, "sync": ray.train.CheckpointUploadMode.SYNC}
WAIT_LOG_S = 60.0  # how often a worker waiting for its previous upload says so


class CheckpointUploads:
    """One worker's checkpoint reports (see the module docstring); ``mode`` is ``run.checkpoint_upload``."""

    def __init__(self, mode: str, *, rank: int) -> None:
        self.mode = UPLOAD_MODES[mode]
        self.rank = rank
        self._previous: threading.Event | None = None

    def wait_for_previous(self) -> float:
        """Wait until this worker's previous upload has ended; returns the seconds waited."""
        started = time.perf_counter()
        previous = self._previous
        while previous is not None and not previous.wait(WAIT_LOG_S):
            logger.warning("rank %d: the previous checkpoint upload is still running after %.0f s; training "
                           "waits for it (run.storage_path is slower than run.checkpoint_every_epochs)",
                           self.rank, time.perf_counter() - started)
        return time.perf_counter() - started

    def report(self, metrics: dict[str, float], folder: Path, scratch: ExitStack, *, dir_name: str) -> None:
        """Report ``metrics`` with the checkpoint in ``folder``; ``scratch`` owns the folder and is closed
        (the folder removed) once the upload ends, or here when the report fails."""
        done = threading.Event()
        storage = ray.train.get_context().get_storage()  # captured here: Ray's upload thread runs it

        def upload(checkpoint: ray.train.Checkpoint, name: str) -> ray.train.Checkpoint:
            try:
                return storage.persist_current_checkpoint(checkpoint, name)
            finally:
                release(scratch, done)

        self._previous = done
        try:
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(folder)),
                             checkpoint_dir_name=dir_name, checkpoint_upload_mode=self.mode,
                             delete_local_checkpoint_after_upload=False, checkpoint_upload_fn=upload)
        except BaseException:
            release(scratch, done)
            raise


def release(scratch: ExitStack, done: threading.Event) -> None:
    """Remove the uploaded folder (close its owner) and mark the upload done, whatever happens."""
    try:
        scratch.close()
    finally:
        done.set()

