"""A real S3 server for tests: moto's standalone server on loopback, and a helper to fill it.

The server is real HTTP (started in a thread); the client side is the ordinary s3fs/botocore
stack, configured only by endpoint and credentials, exactly as a user would point it at MinIO or
AWS. Nothing is patched. Bind the fixture in a test module to use it::

    import _s3_fixtures
    s3_endpoint = _s3_fixtures.s3_endpoint

The fixture (module scope) starts from an empty store, creates the bucket ``echo``, points fsspec's ``s3`` at the server and
sets test credentials in ``os.environ`` (so child processes inherit them; a child that imports
fsspec afresh also needs ``FSSPEC_S3_ENDPOINT_URL``, which `child_env` adds), and restores both.
"""

from __future__ import annotations

import os
import urllib.request

import fsspec
import pytest

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

BUCKET = "echo"


@pytest.fixture(scope="module")
def s3_endpoint():
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    # moto keeps its buckets in process-wide state that outlives a server: start empty.
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"))
    saved = {
        k: os.environ.get(k)
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    }
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1"
    )
    old_conf = fsspec.config.conf.get("s3")
    # The same knob a user sets (or FSSPEC_S3_ENDPOINT_URL in the environment).
    fsspec.config.conf["s3"] = {"endpoint_url": endpoint}
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    fsspec.filesystem("s3").mkdir(BUCKET)
    try:
        yield endpoint
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        if old_conf is None:
            fsspec.config.conf.pop("s3", None)
        else:
            fsspec.config.conf["s3"] = old_conf
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


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
