"""``echocmr models list | pull``: what is registered, and a copy that works without MLflow.

``list_models`` reads the registry: every registered model, its versions, the aliases pointing at
them (``champion``, ``challenger``), and the val AUCs and data digest that `model.registry` tags each
version with (falling back to the training run's metrics and ``data_digest`` tag for versions
registered by other means).

``pull_model("NAME@ALIAS" | "NAME/VERSION", out)`` writes a directory that `eval` and `predict`
accept with the tracking server gone:

* ``checkpoint.pt``: the network's weights, model config and input spec in the
  `model.checkpoint` layout (written by `model.checkpoint.save_model`), which
  `model.store.load_model(DIR)` reads with no MLflow at all;
* ``mlflow_model/``: the registered MLflow model as downloaded, for provenance and MLflow tools;
* ``stats.json``: the training run's shard statistics (clip format), when the run logged them;
  `predict` uses its clip size and frame rate to preprocess DICOMs as ingest did;
* ``echocmr_model.json``: name, version, aliases, run id, val AUCs, data digest, source URI.

(A bare MLflow model directory also loads through `load_model`, but MLflow 3 asks the tracking
server about the model id written in ``MLmodel``, so it hangs when the server is down; the
checkpoint form does not.)
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from echocmr.model.checkpoint import read_checkpoint, save_model
from echocmr.model.publish import log_model
from echocmr.model.pulled import MLFLOW_SUBDIR, MODEL_INFO_FILE
from echocmr.model.registry import parse_reference
from echocmr.model.store import load_model
from echocmr.model.tracking import run_metric
from echocmr.shards.format import STATS_FILE, TASKS

log = logging.getLogger(__name__)



@dataclass(kw_only=True)
class ModelVersionInfo:
    name: str
    version: str
    aliases: list[str] = field(default_factory=list)
    run_id: str | None = None
    val_mean_auc: float | None = None
    val_aucs: dict[str, float | None] = field(default_factory=dict)
    data_digest: str | None = None
    selection: str | None = None  # the rule its checkpoint (and champion alias) was chosen by
    selection_score: float | None = None
    source: str | None = None
    created: int | None = None  # ms since epoch

    def to_dict(self) -> dict:
        return asdict(self)


def _float(text) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return None if value != value else value  # NaN -> None


def _client(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    # The registry is the tracking store's: MLflow's default registry URI is the process-wide
    # tracking URI (``./mlflow.db`` when none is set), not this client's, so `models pull
    # --tracking-uri X` run elsewhere looked for the model in the working directory's store.
    return MlflowClient(tracking_uri, registry_uri=tracking_uri)


def _version_info(client, version, aliases: list[str]) -> ModelVersionInfo:
    tags = dict(version.tags or {})
    run_id = version.run_id or tags.get("run_id")
    info = ModelVersionInfo(
        name=version.name, version=str(version.version), aliases=sorted(aliases), run_id=run_id,
        val_mean_auc=_float(tags.get("val_mean_auc")),
        val_aucs={t: _float(tags.get(f"val_auc_{t}")) for t in TASKS},
        data_digest=tags.get("data_digest"), selection=tags.get("selection"),
        selection_score=_float(tags.get("selection_score")), source=version.source,
        created=version.creation_timestamp,
    )
    needs_run = info.data_digest is None or all(v is None for v in info.val_aucs.values())
    if run_id and needs_run:  # registered without model.registry's tags: read the run
        try:
            run = client.get_run(run_id)
        except Exception as exc:  # a deleted run must not break the listing
            log.warning("run %s of %s/%s: %s", run_id, version.name, version.version, exc)
        else:
            metrics = run.data.metrics
            info.val_aucs = {t: info.val_aucs.get(t) or _float(run_metric(metrics, f"val_auc_{t}"))
                             for t in TASKS}
            best = run_metric(metrics, "best_val_mean_auc")
            info.val_mean_auc = info.val_mean_auc or _float(
                best if best is not None else run_metric(metrics, "val_mean_auc"))
            info.data_digest = info.data_digest or run.data.tags.get("data_digest") \
                or run.data.params.get("data_digest")
    return info


def list_models(tracking_uri: str, name: str | None = None) -> list[ModelVersionInfo]:
    """Every version of every registered model (or of ``name``), newest version first."""
    client = _client(tracking_uri)
    models = [client.get_registered_model(name)] if name else client.search_registered_models()
    out = []
    for rm in sorted(models, key=lambda m: m.name):
        by_version: dict[str, list[str]] = {}
        for alias, version in (rm.aliases or {}).items():
            by_version.setdefault(str(version), []).append(alias)
        versions = client.search_model_versions(f"name='{rm.name}'")
        for v in sorted(versions, key=lambda v: -int(v.version)):
            out.append(_version_info(client, v, by_version.get(str(v.version), [])))
    return out


def format_models(infos: list[ModelVersionInfo]) -> str:
    """A fixed-width table for the terminal."""
    if not infos:
        return "no registered models (train with --register NAME to create one)"
    head = ["name", "version", "aliases", "selected on", "val mean AUC",
            *[f"val {t.upper()}" for t in TASKS], "data digest", "run"]
    rows = [head]
    for i in infos:
        chosen = f"{i.selection} {_fmt(i.selection_score)}" if i.selection else "-"
        rows.append([
            i.name, i.version, ",".join(i.aliases) or "-", chosen, _fmt(i.val_mean_auc),
            *[_fmt(i.val_aucs.get(t)) for t in TASKS], (i.data_digest or "-")[:12],
            (i.run_id or "-")[:12],
        ])
    widths = [max(len(r[k]) for r in rows) for k in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def resolve_version(tracking_uri: str, ref: str) -> ModelVersionInfo:
    """The registry entry a ``NAME@ALIAS`` / ``NAME/VERSION`` reference points at."""
    client = _client(tracking_uri)
    name, alias, version = parse_reference(ref)
    mv = (client.get_model_version_by_alias(name, alias) if alias
          else client.get_model_version(name, version))
    rm = client.get_registered_model(name)
    aliases = [a for a, v in (rm.aliases or {}).items() if str(v) == str(mv.version)]
    return _version_info(client, mv, aliases)


def pull_model(ref: str, out: str | os.PathLike, *, tracking_uri: str) -> ModelVersionInfo:
    """Copy a registered version into ``out`` in a form that loads offline (module docstring)."""
    import mlflow
    from mlflow.models import Model


    parse_reference(ref)  # a malformed reference fails before anything is contacted
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty directory; pull into a new one")
    mlflow.set_tracking_uri(tracking_uri)  # models:/ downloads resolve through its registry
    info = resolve_version(tracking_uri, ref)
    out.mkdir(parents=True, exist_ok=True)
    mlflow_dir = out / MLFLOW_SUBDIR
    mlflow_dir.mkdir()
    mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{info.name}/{info.version}",
                                        dst_path=str(mlflow_dir), tracking_uri=tracking_uri)
    meta = Model.load(str(mlflow_dir)).metadata or {}
    try:  # train's loader and train's checkpoint layout: eval and predict read it back offline
        model, spec = load_model(str(mlflow_dir))
        save_model(str(out), model, spec, epoch=meta.get("epoch"),
                   metrics=meta.get("val_metrics", {}),
                   registered={"name": info.name, "version": info.version})
    except ValueError as exc:
        raise ValueError(f"{ref}: {exc}") from None
    if info.run_id:
        try:
            mlflow.set_tracking_uri(tracking_uri)
            stats = mlflow.artifacts.load_dict(f"runs:/{info.run_id}/{STATS_FILE}")
        except Exception as exc:
            log.warning("%s: the run's stats.json is not available (%s); predict will use the "
                        "ingest defaults for clip size and frame rate", ref, exc)
        else:
            (out / STATS_FILE).write_text(json.dumps(stats, indent=2) + "\n")
    (out / MODEL_INFO_FILE).write_text(json.dumps(
        {**info.to_dict(), "reference": ref, "tracking_uri": _redact(tracking_uri)}, indent=2)
        + "\n")
    return info


def relog_version(tracking_uri: str, name: str, version: str, *,
                  checkpoint: str | None = None) -> ModelVersionInfo:
    """Re-log version ``version`` of ``name`` in the current model format, as a new version.

    The weights come from ``checkpoint`` if given, else the checkpoint its run recorded
    (tag ``echocmr.model_checkpoint``, inside ``./train_runs``) when that still exists, else the
    old logged model itself
    (a pickled network loads where pickles are allowed). The new version gets the old one's
    tags, description and aliases, plus ``relogged_from_version``.
    """
    import mlflow
    from mlflow.tracking import MlflowClient


    client = MlflowClient(tracking_uri)
    mv = client.get_model_version(name, version)
    run_id = mv.run_id or (mv.tags or {}).get("run_id")
    if checkpoint is None and run_id:
        recorded = client.get_run(run_id).data.tags.get("echocmr.model_checkpoint")
        # a path inside the run's storage (echocmr <= 0.2: the full path); the default storage
        # is ./train_runs, so relog from where training ran finds it (else pass --checkpoint)
        candidates = [recorded, os.path.join("train_runs", recorded)] if recorded else []
        checkpoint = next((c for c in candidates if os.path.exists(c)), None)
    if checkpoint is not None:
        state, source = read_checkpoint(checkpoint), checkpoint
    else:
        state, source = _state_of_logged(tracking_uri, f"models:/{name}/{version}"), "logged"
    if run_id is None:
        exp = client.get_experiment_by_name("echocmr")
        exp_id = exp.experiment_id if exp else client.create_experiment("echocmr")
        run_id = client.create_run(exp_id, run_name=f"relog-{name}-{version}").info.run_id
    mlflow.set_tracking_uri(tracking_uri)
    model_uri = log_model(state, tracking_uri=tracking_uri, run_id=run_id)
    tags = {**(mv.tags or {}), "relogged_from_version": str(version), "relogged_from": source}
    new = mlflow.register_model(model_uri, name, tags=tags)
    note = f"\n\n(Re-logged from version {version} in the current model format.)\n"
    client.update_model_version(name, new.version, description=(mv.description or "") + note)
    for alias in list(client.get_registered_model(name).aliases or {}):
        if str(client.get_model_version_by_alias(name, alias).version) == str(version):
            client.set_registered_model_alias(name, alias, new.version)
    return resolve_version(tracking_uri, f"{name}/{new.version}")


def _state_of_logged(tracking_uri: str, uri: str) -> dict:
    """A checkpoint-layout state from a logged model (old pickled ones included)."""

    model, spec = load_model(uri, tracking_uri=tracking_uri)
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError(f"{uri} holds no echocmr network config; relog it with --checkpoint")
    model_cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}
    return {"model": model.state_dict(), "config": {"model": model_cfg},
            "input_spec": spec.to_dict(), "epoch": None, "metrics": {}}


def _redact(uri: str) -> str:
    """A tracking URI without credentials (``https://user:pw@host`` -> ``https://host``)."""
    return re.sub(r"//[^/@]*@", "//", uri)
