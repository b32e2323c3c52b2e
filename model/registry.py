"""Model registry: register a trained model and move the ``champion`` alias only when it is better.

``register_model(model_uri, name, ...)`` creates a new version of registered model ``name`` and
tags it with its val AUCs (``val_mean_auc``, ``val_auc_<task>``), the data digest, the run, and
the pre-specified rule its best checkpoint was chosen by (``selection``, e.g. ``val AUC (wma)``)
with that rule's score (``selection_score``). The alias ``champion`` moves by the same rule that
chose the checkpoint: to the new version only if the current champion was chosen by the same rule
on the same data (``data_digest`` and ``data_scope``, e.g. ``excluding sites X`` after
``train --exclude-site X``: the same val split) and the new score beats its score. Scores
under different rules, or on different val sets, are not comparable: the new version becomes
``challenger`` and the version's ``champion_decision`` tag says why, so a person compares them on
a common test set (``echocmr eval``) and promotes by hand. The first version of a name is
champion. A version without a score never displaces a champion that has one. Versions registered
before the ``selection`` tag existed were compared on the mean val AUC over every task, and are
read as that rule. MLflow 3 deprecates stages; aliases are the supported way to point at "the model
in use" (``models:/NAME@champion``).

A person may override the policy: `promote` (``echocmr models promote NAME VERSION --alias
champion --reason TEXT``) points the alias at a version and records on it who did (the user
name), when and why (``promoted_by``, ``promoted_at``, ``promoted_reason``, ``promoted_alias``).
`describe_version` writes the model card (`model.card`) as the version's description.

Comparing AUCs across versions is only fair on the same val split: the data digest tags let a
reviewer check that. Study-level AUCs with confidence intervals come from ``echocmr eval``.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

CHAMPION, CHALLENGER = "champion", "challenger"
LEGACY_SELECTION = "val mean AUC (all tasks)"  # the rule of versions without a selection tag
ALL_SITES = "all sites"  # the data scope of versions without a data_scope tag


@dataclass
class Registration:
    name: str
    version: str
    alias: str  # "champion" or "challenger"
    val_mean_auc: float | None
    previous_champion: str | None  # version that held champion before, if any
    previous_champion_auc: float | None
    selection: str = LEGACY_SELECTION
    selection_score: float | None = None
    decision: str = ""  # why this alias (also the version's champion_decision tag)


def register_model(model_uri: str, name: str, *, tracking_uri: str, val_mean_auc: float | None,
                   val_aucs: dict[str, float | None], data_digest: str,
                   run_id: str | None = None, selection: str | None = None,
                   selection_score: float | None = None,
                   data_scope: str = ALL_SITES) -> Registration:
    """Register ``model_uri`` as a new version of ``name`` and set its alias (see module doc).

    ``selection``/``selection_score``: the run's checkpoint rule (``SelectionConfig.describe()``)
    and the best checkpoint's score under it (higher is better); without them the version is
    compared as versions before 0.2 were, on ``val_mean_auc``.
    """
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    tags = {"data_digest": data_digest,
            "val_mean_auc": _fmt(val_mean_auc),
            **{f"val_auc_{task}": _fmt(auc) for task, auc in val_aucs.items()}}
    if selection is None:
        selection, selection_score = LEGACY_SELECTION, val_mean_auc
    tags |= {"selection": selection, "selection_score": _fmt(selection_score),
             "data_scope": data_scope}
    if run_id:
        tags["run_id"] = run_id
    version = str(mlflow.register_model(model_uri, name, tags=tags).version)

    previous, previous_auc, champion = None, None, None
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
        previous = str(champion.version)
        previous_auc = _parse(champion.tags.get("val_mean_auc"))
    except MlflowException:  # no champion yet
        pass
    alias, decision = _decide(champion, selection, selection_score, data_digest, data_scope)
    client.set_registered_model_alias(name, alias, version)
    client.set_model_version_tag(name, version, "champion_decision", decision)
    return Registration(name=name, version=version, alias=alias, val_mean_auc=val_mean_auc,
                        previous_champion=previous, previous_champion_auc=previous_auc,
                        selection=selection, selection_score=selection_score, decision=decision)


def _decide(champion, selection: str, score: float | None, digest: str,
            scope: str = ALL_SITES) -> tuple[str, str]:
    """(alias, why) for a new version against the current ``champion`` version (or None)."""
    if champion is None:
        return CHAMPION, "first version with a champion alias"
    v, tags = champion.version, champion.tags
    their_rule = tags.get("selection", LEGACY_SELECTION)
    their_score = _parse(tags.get("selection_score", tags.get("val_mean_auc")))
    if their_rule != selection:
        return CHALLENGER, (f"not compared: champion v{v} was chosen by {their_rule!r}, this "
                            f"version by {selection!r}; evaluate both on one test split and "
                            "promote by hand")
    if tags.get("data_digest") != digest:
        return CHALLENGER, (f"not compared: champion v{v} was scored on other data (digest "
                            f"{str(tags.get('data_digest'))[:12]}, this {digest[:12]}); evaluate "
                            "both on one test split and promote by hand")
    their_scope = tags.get("data_scope", ALL_SITES)
    if their_scope != scope:
        return CHALLENGER, (f"not compared: champion v{v} was trained and scored on "
                            f"{their_scope}, this version on {scope} (another val set); "
                            "evaluate both on one test split and promote by hand")
    if _beats(score, their_score):
        return CHAMPION, f"{selection} {_fmt(score)} beats champion v{v}'s {_fmt(their_score)}"
    return CHALLENGER, (f"{selection} {_fmt(score)} does not beat champion v{v}'s "
                        f"{_fmt(their_score)}")


def promote(tracking_uri: str, name: str, version: str, *, alias: str, reason: str,
            user: str | None = None) -> str | None:
    """Point ``alias`` at ``version`` of ``name`` by hand; return the version it left (if any).

    ``reason`` is required (a person overrides the val-AUC policy: say why); ``user`` defaults
    to the login name. Both are written on the version as tags, with the time.
    """
    import getpass
    import time

    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    if not (reason or "").strip():
        raise ValueError("promote needs a --reason (it is recorded on the version)")
    client = MlflowClient(tracking_uri)
    client.get_model_version(name, version)  # a missing version fails before anything moves
    try:
        previous = str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        previous = None
    user = user or os.environ.get("USER") or getpass.getuser()
    client.set_registered_model_alias(name, alias, version)
    for key, value in {"promoted_alias": alias, "promoted_by": user,
                       "promoted_reason": reason.strip(),
                       "promoted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                       "promoted_from_version": previous or "none"}.items():
        client.set_model_version_tag(name, version, key, value)
    return previous


def describe_version(tracking_uri: str, name: str, version: str, description: str) -> None:
    """Write ``description`` (the model card) on ``version`` of ``name``."""
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri).update_model_version(name, version, description=description)


def _beats(new: float | None, old: float | None) -> bool:
    if new is None or math.isnan(new):
        return False
    return old is None or math.isnan(old) or new > old


def _fmt(value: float | None) -> str:
    return "none" if value is None or math.isnan(value) else f"{value:.6f}"


def _parse(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "none") else None
    except ValueError:
        return None


_REF_RE = re.compile(r"^(?:models:/)?(?P<name>[^@/]+)(?:@(?P<alias>[^@/]+)|/(?P<version>\d+))$")


def parse_reference(ref: str) -> tuple[str, str | None, str | None]:
    """``NAME@ALIAS`` or ``NAME/VERSION`` (``models:/`` optional) -> (name, alias, version)."""
    m = _REF_RE.match(ref.strip())
    if not m:
        raise ValueError(f"model reference {ref!r}: write NAME@ALIAS (e.g. echo@champion) or "
                         "NAME/VERSION (e.g. echo/3)")
    return m.group("name"), m.group("alias"), m.group("version")
