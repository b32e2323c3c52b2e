"""Helpers for the tests that run against a real S3 server (the ``s3_endpoint`` fixture in
``conftest.py``: moto's standalone server on loopback, real HTTP, started in a thread).

The client side is the ordinary s3fs/botocore stack, configured only by endpoint and
credentials, exactly as a user would point it at MinIO or AWS. Nothing is patched. Importing this
module skips the importing test module when s3fs or moto is not installed."""

from __future__ import annotations

import os

import fsspec

BUCKET = "echo"


def child_env(endpoint: str) -> dict[str, str]:
    """Environment for a child process (or a Ray worker) that must reach the test server."""
    return {**os.environ, "FSSPEC_S3_ENDPOINT_URL": endpoint}


def upload(local_dir: str, url: str) -> str:
    """Copy every file of ``local_dir`` (not subdirectories) to the prefix ``url``; return it."""
    fs = fsspec.filesystem("s3")
    prefix = url.split("://", 1)[1].rstrip("/")
    for name in sorted(os.listdir(local_dir)):
        path = os.path.join(local_dir, name)
        if os.path.isfile(path):
            fs.put_file(path, f"{prefix}/{name}")
    return url


def remove_prefix(url: str) -> None:
    """Delete every object under ``url``."""
    fs = fsspec.filesystem("s3")
    prefix = url.split("://", 1)[1].rstrip("/")
    if fs.exists(prefix):
        fs.rm(prefix, recursive=True)
