"""The MLflow store a command talks to, and the run tags that name a model's data.

`resolve_tracking_uri`: ``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else the embedded
``sqlite:///mlflow.db`` here. `manifest_digest` names the exact shard set a model saw; the site
tags record which sites a run trained on and which it left out (eval checks ``--holdout-site``
against them, ``echocmr loso`` finds each site's model by them).
"""

from __future__ import annotations

import hashlib
import os

from echocmr.shards.format import MANIFEST_FILE
from echocmr.shards.storage import join, open_file

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
# Which sites a run trained on and which it left out (comma-separated, "" for none): eval checks
# a --holdout-site against them, and `echocmr loso` finds each site's model by the second.
TRAIN_SITES_TAG = "echocmr.train_sites"
EXCLUDE_SITES_TAG = "echocmr.exclude_sites"


def site_tags(exclude_sites, train_sites) -> dict[str, str]:
    """The run tags that record the sites a run trained on and those it left out."""
    return {TRAIN_SITES_TAG: ",".join(train_sites),
            EXCLUDE_SITES_TAG: ",".join(sorted(exclude_sites))}


def resolve_tracking_uri(flag: str | None = None) -> str:
    """``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` here.

    A relative sqlite path is made absolute: Ray workers may run in another directory.
    """
    uri = str(flag or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI)
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        uri = prefix + os.path.abspath(uri[len(prefix):])
    return uri


def sqlite_artifact_root(tracking_uri: str) -> str | None:
    """``<db dir>/mlruns`` for an sqlite store (MLflow would use ``./mlruns`` of whatever
    directory the process runs in), so a ``sqlite:///DIR/mlflow.db`` store keeps its artifacts
    beside it; ``None`` (the server's or MLflow's default) for other stores."""
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix):
        return None
    db = tracking_uri[len(prefix):]
    return "file://" + os.path.join(os.path.dirname(os.path.abspath(db)), "mlruns")


def manifest_digest(shards: str) -> str:
    """sha256 of the shard set's ``manifest.parquet``: names the exact data a model saw."""
    h = hashlib.sha256()
    with open_file(join(shards, MANIFEST_FILE), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
