"""A bounded thread pool for many small I/O calls (S3 requests, file hashing) with a progress bar."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from typing import Any

from tqdm import tqdm


def run_parallel(fn: Callable[[Any], Any], items: list[Any], *, max_workers: int, desc: str) -> list[Any]:
    """``[fn(item) for item in items]`` on a bounded thread pool with a progress bar; the first error
    cancels what has not started and is re-raised."""
    results: list[Any] = [None] * len(items)
    if not items:
        return results
    with ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="io") as pool, \
            tqdm(total=len(items), desc=desc, unit="obj", disable=None, leave=False) as bar:
        futures: dict[Future[Any], int] = {pool.submit(fn, item): i for i, item in enumerate(items)}
        for future in as_completed(futures):
            error = future.exception()
            if error is not None:
                for other in futures:
                    other.cancel()
                raise error
            results[futures[future]] = future.result()
            bar.update(1)
    return results
