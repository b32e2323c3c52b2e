"""Where a model came from: its training run, and the sites that run trained on and left out.

Eval checks an external validation (``--holdout-site``) against these; predict finds the run's
``stats.json`` through them. Models trained before echocmr recorded sites, and networks saved
without their run, have no record: an external validation on them cannot be checked.
"""

from __future__ import annotations

import logging
from pathlib import Path

from echocmr.model.checkpoint import read_checkpoint
from echocmr.model.pulled import read_model_info
from echocmr.model.registry import parse_reference
from echocmr.model.tracking import EXCLUDE_SITES_TAG, TRAIN_SITES_TAG

log = logging.getLogger(__name__)


def source_run_id(model_uri: str, tracking_uri: str) -> str | None:
    """The training run behind ``model_uri``, when one can be found without guessing."""
    if model_uri.startswith("runs:/"):
        return model_uri[len("runs:/"):].split("/", 1)[0] or None
    if model_uri.startswith("models:/"):
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri)
        rest = model_uri[len("models:/"):]
        if rest.startswith("m-") and "/" not in rest and "@" not in rest:
            try:  # a logged model (what `echocmr train` prints): its source run
                return client.get_logged_model(rest).source_run_id or None
            except Exception as exc:
                log.debug("no logged model %s: %s", model_uri, exc)
                return None
        try:
            name, alias, version = parse_reference(model_uri)
            mv = (client.get_model_version_by_alias(name, alias) if alias
                  else client.get_model_version(name, version))
            return mv.run_id or (mv.tags or {}).get("run_id")
        except Exception as exc:  # e.g. models:/m-<id> logged-model URIs
            log.debug("no registry entry for %s: %s", model_uri, exc)
            return None
    if Path(model_uri).is_dir():
        info = read_model_info(model_uri) or {}
        return info.get("run_id")
    return None


def logged_model_id(model_uri: str, tracking_uri: str) -> str | None:
    """The MLflow 3 logged model (``m-...``) behind ``model_uri``: a ``models:/m-...`` URI, a
    registered version's ``model_id``, or a pulled directory's ``MLmodel``; None otherwise."""
    if model_uri.startswith("models:/"):
        rest = model_uri[len("models:/"):]
        if rest.startswith("m-") and "/" not in rest and "@" not in rest:
            return rest
        from mlflow.tracking import MlflowClient

        try:
            name, alias, version = parse_reference(model_uri)
            client = MlflowClient(tracking_uri)
            mv = (client.get_model_version_by_alias(name, alias) if alias
                  else client.get_model_version(name, version))
            if getattr(mv, "model_id", None):
                return mv.model_id
            source = str(mv.source or "")  # registered from a logged model: models:/m-...
            if source.startswith("models:/m-"):
                return source[len("models:/"):].split("/", 1)[0]
            return None
        except Exception as exc:
            log.debug("no logged model for %s: %s", model_uri, exc)
            return None
    if Path(model_uri).is_dir():
        for mlmodel in (Path(model_uri) / "MLmodel", Path(model_uri) / "mlflow_model" / "MLmodel"):
            if mlmodel.is_file():
                for line in mlmodel.read_text(encoding="utf-8").splitlines():
                    if line.startswith("model_id:"):
                        return line.split(":", 1)[1].strip() or None
    return None


def training_sites(model_uri: str, tracking_uri: str) -> dict[str, list[str]] | None:
    """``{"train_sites": [...], "exclude_sites": [...]}`` as the model's training recorded them
    (its MLflow run's tags, or a checkpoint's own record), None when nothing says.

    Models trained before echocmr recorded sites, and networks saved without their run, have
    no record: an external validation on them cannot be checked.
    """
    def split(text: str) -> list[str]:
        return [s for s in text.split(",") if s]

    local = Path(model_uri).expanduser()
    if local.exists() and (local.is_file() or (local / "checkpoint.pt").is_file()):
        try:
            state = read_checkpoint(str(local))
        except ValueError:
            return None
        if state.get("train_sites") is None:
            return None
        data = (state.get("config") or {}).get("data") or {}
        return {"train_sites": list(state["train_sites"]),
                "exclude_sites": list(data.get("exclude_sites") or [])}
    run_id = source_run_id(model_uri, tracking_uri)
    if run_id is None:
        return None
    from mlflow.tracking import MlflowClient

    try:
        tags = MlflowClient(tracking_uri).get_run(run_id).data.tags
    except Exception as exc:  # the run is gone, or tracking is unreachable
        log.warning("could not read the training run %s of %s: %s", run_id, model_uri, exc)
        return None
    if TRAIN_SITES_TAG not in tags:
        return None
    return {"train_sites": split(tags[TRAIN_SITES_TAG]),
            "exclude_sites": split(tags.get(EXCLUDE_SITES_TAG, ""))}
