"""Networks pickled by older echocmr versions, and the module names their pickles use.

Before the pyfunc artifact (`model.artifact`), echocmr logged the network with
``mlflow.pytorch``'s pickle; echocmr 0.1 pickled it under its old top-level packages
(``train.model.R2Plus1D``). Such models still load, through the names they hold, for one load
only; in a Python where another package called ``train`` is already loaded, loading one says so
and how to re-log it.
"""

from __future__ import annotations

import contextlib
import logging

import torch

log = logging.getLogger(__name__)

RELOG_HINT = ("re-log it in the current format with `echocmr models relog NAME VERSION` (from its "
              "run's checkpoint, docs/pull-a-model.md)")


def load_pickled(local: str, uri: str) -> torch.nn.Module:
    """A network pickled by ``mlflow.pytorch`` (echocmr before the pyfunc artifact)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    log.warning("%s is a pickled network (logged by an older echocmr); %s", uri, RELOG_HINT)
    try:
        try:
            model = mlflow.pytorch.load_model(local, map_location="cpu")
        except ModuleNotFoundError as exc:
            if (exc.name or "").split(".")[0] not in LEGACY_PACKAGES:
                raise
            # Logged by echocmr before the `echocmr.*` namespace: its pickle names `train.model`.
            log.info("%s names the old module %r; loading it through the old module names",
                     uri, exc.name)
            with _legacy_module_names():
                model = mlflow.pytorch.load_model(local, map_location="cpu")
    except MlflowException as exc:  # e.g. MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false
        raise ValueError(f"{uri} is a pickled network and cannot be loaded here ({exc}); "
                         f"{RELOG_HINT}") from None
    model.eval()
    return model


# Top-level packages of echocmr 0.1, before everything moved under `echocmr.`. A model pickled
# then names its classes by them (`train.model.R2Plus1D`, `train.config.ModelConfig`).
LEGACY_PACKAGES = ("train", "shards", "ingest", "eval", "cluster")
# Modules that moved since (0.3: the model package); everything else is `echocmr.<old name>`.
MOVED_MODULES = {"train.model": "echocmr.model.network", "train.contract": "echocmr.model.contract"}


def current_module_name(legacy: str) -> str:
    """Where a module an old pickle names lives now (`train.model` -> `echocmr.model.network`)."""
    return MOVED_MODULES.get(legacy, f"echocmr.{legacy}")


class _LegacyAliasFinder:
    """Resolves `train.x` to the module that holds its classes now (same module object)."""

    def find_spec(self, fullname, path=None, target=None):
        import importlib
        import importlib.util

        if fullname.split(".")[0] not in LEGACY_PACKAGES:
            return None
        module = importlib.import_module(current_module_name(fullname))
        return importlib.util.spec_from_loader(fullname, _AliasLoader(module))


class _AliasLoader:
    def __init__(self, module) -> None:
        self.module = module

    def create_module(self, spec):
        return self.module

    def exec_module(self, module) -> None:
        pass


@contextlib.contextmanager
def _legacy_module_names():
    """Let an old pickle find `train.model` as `echocmr.model.network`, for one load only: nothing
    named `train` stays in `sys.modules` to shadow (or be shadowed by) somebody else's package."""
    import sys

    taken = [name for name in LEGACY_PACKAGES if name in sys.modules]
    if taken:
        raise RuntimeError(
            f"this model was logged by echocmr 0.1 and names module {taken[0]!r}, but another "
            f"package of that name is loaded in this Python; load it in a fresh process, or "
            f"{RELOG_HINT}")
    finder = _LegacyAliasFinder()
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        for name in [n for n in sys.modules if n.split(".")[0] in LEGACY_PACKAGES]:
            del sys.modules[name]
