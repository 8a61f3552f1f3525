"""The embedded S3 default: moto's standalone S3 server on a free loopback port (``make demo``, the
tests and the ingest benchmark start it; nothing to install or configure)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

S3_VARIABLES = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def embedded_s3(*, access_key: str = "demo") -> Iterator[str]:
    """Run moto's S3 server on loopback; inside the block the AWS_* variables point boto3 (and every
    entry point that resolves its config from the environment) at it. Yields the endpoint URL."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {name: os.environ.get(name) for name in S3_VARIABLES}
    # Throwaway credentials for a throwaway local server: it never talks to real AWS.
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID=access_key,
                      AWS_SECRET_ACCESS_KEY=access_key, AWS_DEFAULT_REGION="us-east-1")
    try:
        yield endpoint
    finally:
        server.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
