"""``echocmr predict`` and ``echocmr models list|pull|promote|relog``.

Thin entry points over `model.predict`, `model.versions` and `model.registry`. Nothing heavy
(torch, MLflow) is imported at module level, so ``echocmr --help`` stays instant. MLflow:
``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in the working
directory.
"""

from __future__ import annotations

import argparse
import json
import sys

TRACKING_HELP = "MLflow URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)"
MODEL_HELP = ("models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/model, a directory from "
              "`echocmr models pull`, or a checkpoint directory / checkpoint.pt")


def register(subparsers) -> None:
    _register_predict(subparsers)
    _register_models(subparsers)


def _register_predict(subparsers) -> None:
    p = subparsers.add_parser(
        "predict", help="per-study probabilities for raw DICOM files",
        description="Preprocess DICOM files exactly as ingest does, run the model over their "
                    "clips and write per-study probabilities (CSV or JSON by --out's extension). "
                    "Files that cannot be used are reported with the reason.")
    p.add_argument("--model", required=True, metavar="URI", help=MODEL_HELP)
    p.add_argument("--out", required=True, metavar="FILE", help="output .csv or .json")
    p.add_argument("dicom", nargs="+", metavar="DICOM", help="DICOM files")
    p.add_argument("--clips", default="all", choices=("all", "centre"))
    p.add_argument("--stride", type=int, metavar="FRAMES")
    p.add_argument("--ingest-config", metavar="FILE",
                   help="the ingest YAML the training shards were made with (default: ingest's "
                        "defaults at the model's clip size and frame rate)")
    p.add_argument("--view-model", metavar="URI",
                   help="view classifier (models:/NAME@ALIAS or a directory; docs/views.md): "
                        "each file's view and confidence are reported, and files of other "
                        "views than --views are left out (reason view_not_target or "
                        "view_unknown) instead of entering a study's probability. Default: "
                        "the view model the CMR model records (the one that labelled its "
                        "training set), logged with it or found in the registry")
    p.add_argument("--no-view-model", action="store_true",
                   help="use every file whatever its view, even when the model records a view "
                        "model")
    p.add_argument("--views", action="append", metavar="VIEW",
                   help="views the model was trained on (repeatable; default: the views the "
                        "model records, else A4C, A2C, PLAX); with a view model")
    p.add_argument("--tracking-uri", help=TRACKING_HELP)
    p.set_defaults(func=run_predict_cmd)


def _register_models(subparsers) -> None:
    p = subparsers.add_parser("models", help="list registered models; pull one for offline use")
    sub = p.add_subparsers(dest="models_command", metavar="ACTION")
    ls = sub.add_parser("list", help="registered models: versions, aliases, val AUCs, data digest")
    ls.add_argument("--name", help="only this registered model")
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ls.add_argument("--tracking-uri", help=TRACKING_HELP)
    ls.set_defaults(func=run_models_list_cmd)
    pull = sub.add_parser("pull", help="copy NAME@ALIAS or NAME/VERSION to a directory that "
                                       "eval and predict load without MLflow")
    pull.add_argument("ref", metavar="NAME@ALIAS", help="e.g. echo@champion or echo/3")
    pull.add_argument("--out", required=True, metavar="DIR")
    pull.add_argument("--tracking-uri", help=TRACKING_HELP)
    pull.set_defaults(func=run_models_pull_cmd)
    promote = sub.add_parser(
        "promote", help="point an alias (champion) at a version by hand, recording who and why",
        description="Override the val-AUC alias policy: set --alias on NAME VERSION and record "
                    "on the version who did it (user name), when, and --reason.")
    promote.add_argument("name", metavar="NAME")
    promote.add_argument("version", metavar="VERSION")
    promote.add_argument("--alias", default="champion", help="alias to set (default champion)")
    promote.add_argument("--reason", required=True, help="why (recorded on the version)")
    promote.add_argument("--tracking-uri", help=TRACKING_HELP)
    promote.set_defaults(func=run_models_promote_cmd)
    relog = sub.add_parser(
        "relog", help="re-log a version in the current model format (a new version)",
        description="Re-log NAME VERSION, logged by an older echocmr (a pickled network), as a "
                    "new version in the current format: weights from --checkpoint, else its "
                    "run's recorded checkpoint, else the old model itself. Tags, description "
                    "and aliases move to the new version.")
    relog.add_argument("name", metavar="NAME")
    relog.add_argument("version", metavar="VERSION")
    relog.add_argument("--checkpoint", metavar="PATH",
                       help="checkpoint directory or checkpoint.pt to take the weights from")
    relog.add_argument("--tracking-uri", help=TRACKING_HELP)
    relog.set_defaults(func=run_models_relog_cmd)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_predict_cmd(args: argparse.Namespace) -> int:
    from echocmr.model.predict import (
        FORMATS,
        PredictConfig,
        load_for_predict,
        predict_files,
        write_prediction,
    )

    if not args.out.lower().endswith(FORMATS):
        print(f"echocmr predict: --out {args.out}: use a .csv or .json file name", file=sys.stderr)
        return 2
    try:
        config = PredictConfig(clips=args.clips, stride=args.stride,
                               ingest_config=args.ingest_config)
        model, spec, stats, recorded = load_for_predict(args.model,
                                                        tracking_uri=args.tracking_uri)
        view_filter = _view_filter(args, recorded)
    except (FileNotFoundError, ValueError) as exc:
        print(f"echocmr predict: {exc}", file=sys.stderr)
        return 1
    result = predict_files(args.dicom, model, spec, config=config, stats=stats,
                           view_filter=view_filter)
    write_prediction(result, args.out)
    # A file is named by its position on the command line: exports name files after patients,
    # and a terminal's output ends up in logs; the paths are in --out, at the site.
    position = {path: i for i, path in reversed(list(enumerate(args.dicom, start=1)))}
    for r in result.rejected:
        print(f"not used: file {position.get(r['file'], '?')} of {len(args.dicom)}: "
              f"{r['reason']} ({r['detail']}); its path is in {args.out}", file=sys.stderr)
    print(f"{len(result.studies)} studies from {len(args.dicom) - len(result.rejected)} of "
          f"{len(args.dicom)} files -> {args.out}")
    return 0 if len(result.studies) else 1


def _view_filter(args: argparse.Namespace, recorded=None):
    """`model.predict.ViewFilter` from ``--view-model`` / ``--views``, else from the view model
    the CMR model records (`model.recorded_views.RecordedViews`); None without one."""
    from echocmr.model.predict import ViewFilter
    from echocmr.model.view_store import load_view_classifier
    from echocmr.shards.format import TARGET_VIEWS, VIEW_VOCABULARY

    if args.no_view_model and args.view_model:
        raise ValueError("--no-view-model and --view-model: choose one")
    if args.no_view_model or (args.view_model is None and
                              (recorded is None or recorded.classifier is None)):
        if args.views:
            raise ValueError("--views needs a view model (--view-model, or a model that "
                             "records one)")
        return None
    default = recorded.views if recorded is not None else TARGET_VIEWS
    views = tuple(dict.fromkeys(args.views or default))
    bad = [v for v in views if v not in VIEW_VOCABULARY]
    if bad:
        raise ValueError(f"--views {', '.join(bad)}: choose among {', '.join(VIEW_VOCABULARY)}")
    if args.view_model is not None:
        classifier = load_view_classifier(args.view_model, tracking_uri=args.tracking_uri)
    else:
        classifier = recorded.classifier
        print(f"views: {classifier.source} ({recorded.found_in}) keeps {', '.join(views)}; "
              "--view-model overrides it, --no-view-model turns it off", file=sys.stderr)
    return ViewFilter(classifier=classifier, views=views)


def run_models_list_cmd(args: argparse.Namespace) -> int:
    from echocmr.model.tracking import resolve_tracking_uri
    from echocmr.model.versions import format_models, list_models

    infos = list_models(resolve_tracking_uri(args.tracking_uri), name=args.name)
    if args.json:
        print(json.dumps([i.to_dict() for i in infos], indent=2))
    else:
        print(format_models(infos))
    return 0


def run_models_promote_cmd(args: argparse.Namespace) -> int:
    from mlflow.exceptions import MlflowException

    from echocmr.model.registry import promote
    from echocmr.model.tracking import resolve_tracking_uri

    try:
        previous = promote(resolve_tracking_uri(args.tracking_uri), args.name, args.version,
                           alias=args.alias, reason=args.reason)
    except (ValueError, MlflowException) as exc:
        print(f"echocmr models promote: {exc}", file=sys.stderr)
        return 1
    moved = f" (was version {previous})" if previous else ""
    print(f"{args.name}@{args.alias} -> version {args.version}{moved}; reason recorded")
    return 0


def run_models_relog_cmd(args: argparse.Namespace) -> int:
    from mlflow.exceptions import MlflowException

    from echocmr.model.tracking import resolve_tracking_uri
    from echocmr.model.versions import relog_version

    try:
        info = relog_version(resolve_tracking_uri(args.tracking_uri), args.name, args.version,
                             checkpoint=args.checkpoint)
    except (FileNotFoundError, ValueError, MlflowException) as exc:
        print(f"echocmr models relog: {exc}", file=sys.stderr)
        return 1
    aliases = f" (@{', @'.join(info.aliases)})" if info.aliases else ""
    print(f"re-logged {args.name} version {args.version} as version {info.version}{aliases}")
    return 0


def run_models_pull_cmd(args: argparse.Namespace) -> int:
    from mlflow.exceptions import MlflowException

    from echocmr.model.tracking import resolve_tracking_uri
    from echocmr.model.versions import pull_model

    try:
        info = pull_model(args.ref, args.out, tracking_uri=resolve_tracking_uri(args.tracking_uri))
    except (FileExistsError, ValueError, MlflowException) as exc:
        print(f"echocmr models pull: {exc}", file=sys.stderr)
        return 1
    aliases = f" (@{', @'.join(info.aliases)})" if info.aliases else ""
    print(f"pulled {info.name} version {info.version}{aliases} to {args.out}; use "
          f"--model {args.out} with eval or predict (no MLflow server needed)")
    return 0
