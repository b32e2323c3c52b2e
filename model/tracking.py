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
from echocmr.shards.reader import read_manifest
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


def set_name(shards: str) -> str:
    """The name a record gives a shard set: its last path component (``.../site_a/shards`` ->
    ``shards``). A record never holds the set's full path or URL: the folders above it are the
    machine's (and a site may name them after anything); the digest names the exact data."""
    return os.path.basename(str(shards).rstrip("/")) or "shards"


def provenance_tags(command: str) -> dict[str, str]:
    """MLflow's own provenance tags for a run echocmr opens with an explicit client (which, unlike
    ``mlflow.start_run``, sets none): who (``mlflow.user``), what ran (``mlflow.source.name``,
    ``echocmr <command>``, never a script path), and the git commit of the echocmr code when it
    runs from a checkout (``mlflow.source.git.commit``; an installed wheel has none)."""
    import getpass

    tags = {"mlflow.source.type": "LOCAL", "mlflow.source.name": f"echocmr {command}"}
    try:
        tags["mlflow.user"] = os.environ.get("USER") or getpass.getuser()
    except (KeyError, OSError):  # no login name (a container's uid without a passwd entry)
        pass
    commit = code_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def code_commit() -> str | None:
    """The git commit of the checkout echocmr's code is imported from, if it is one (and clean
    or not: the commit is what the code was based on)."""
    import subprocess

    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and len(commit) == 40 else None


def dataset_input(shards: str, digest: str, *, context: str, manifest=None):
    """The shard set as an MLflow dataset input (``mlflow.log_input``'s entity) for a run:
    name and source `set_name` (never the path), MLflow's 32-character digest (the full sha256
    is the ``data_digest`` tag), the manifest's schema and row count, clips per split as input
    tags, ``mlflow.data.context`` = ``context`` (``training``, ``evaluation``). No row is stored.
    Returns ``(DatasetInput, name, mlflow_digest)``."""
    import warnings

    import mlflow.data
    from mlflow.entities import DatasetInput, InputTag

    manifest = read_manifest(shards) if manifest is None else manifest
    name = set_name(shards)
    counts = manifest["split"].value_counts()
    tags = [InputTag("mlflow.data.context", context), InputTag("data_digest", digest),
            *(InputTag(f"clips_{split}", str(int(n))) for split, n in sorted(counts.items()))]
    # Its schema inference warns about integer columns (the manifest has no missing integers)
    # and about a local path matching two source kinds; neither says anything to our users.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_pandas(manifest, source=name, name=name, digest=digest[:32])
        entity = dataset._to_mlflow_entity()
    return DatasetInput(entity, tags=tags), name, digest[:32]


# How a training run's per-epoch metrics are named in MLflow: grouped by prefix, which MLflow's
# UI shows as sections. The loop and Ray keep the flat names (checkpoint scoring reads them).
_GROUPS = {"train_loss": "train/loss", "train_steps": "train/steps", "val_loss": "val/loss",
           "val_mean_auc": "val/mean_auc", "val_score": "val/selection_score",
           "val_clips": "val/clips", "train_clips_per_s": "system/clips_per_s",
           "data_wait_fraction": "system/data_wait_fraction", "epoch": "system/epoch",
           "global_step": "system/global_step", "resumed_at_epoch": "system/resumed_at_epoch",
           "resumed_at_step": "system/resumed_at_step", "batch": "system/batch",
           "mid_epoch": "system/mid_epoch", "best_val_mean_auc": "best/val_mean_auc",
           "best_val_score": "best/selection_score"}


def grouped_metric(name: str) -> str:
    """A loop metric's MLflow name: ``val_auc_wma`` -> ``val/auc_wma``, ``train_loss_lge`` ->
    ``train/loss_lge``, ``data_wait_fraction`` -> ``system/data_wait_fraction`` (`_GROUPS`);
    a name already grouped, or unknown, is kept."""
    if "/" in name:
        return name
    if name in _GROUPS:
        return _GROUPS[name]
    for prefix in ("train_", "val_"):
        if name.startswith(prefix):
            return f"{prefix[:-1]}/{name[len(prefix):]}"
    return f"system/{name}"


def run_metric(metrics: dict[str, float], name: str) -> float | None:
    """A training run's metric by its flat loop name, read under its grouped name and, for runs
    logged before metrics were grouped (echocmr <= 0.2), under the flat one."""
    for key in (grouped_metric(name), name):
        if key in metrics:
            return metrics[key]
    return None
