"""``echocmr ingest``: DICOM echo clips + CMR label table -> de-identified WebDataset shards.

Parsing only; the work is `ingest.job.run_ingest`. Nothing heavy is imported at module level, so
``echocmr --help`` stays instant. Config: defaults <- ``--config FILE`` <- ``--site`` /
``--workers`` (`ingest.config.load_config`); ``--print-config`` prints it and exits.
"""

from __future__ import annotations

import argparse
import logging
import sys


def register(subparsers) -> None:
    """Add the ``ingest`` subcommand."""
    p = subparsers.add_parser(
        "ingest",
        help="DICOM echo clips + CMR labels -> WebDataset shards",
        description="Turn a hospital echo export and a CMR label table into de-identified "
        "training shards (see docs/ingest.md). Re-running into the same --out resumes.",
    )
    p.add_argument("--dicom", metavar="DIR",
                   help="folder of DICOM files (recursive), or an s3:// / gs:// prefix; required "
                        "unless --print-config")
    p.add_argument("--labels", metavar="FILE",
                   help="CMR table (.parquet or .csv): patient_id, cmr_date, labels; required "
                        "unless --print-config")
    p.add_argument("--out", metavar="DIR",
                   help="output shard set directory or URL prefix (the work cache goes under it); "
                        "required unless --print-config")
    p.add_argument("--address", default=None, metavar="ADDR",
                   help="run the per-file work and the shard writing as tasks on this Ray "
                        "cluster: auto, HOST:PORT or ray://HOST:PORT (default: $RAY_ADDRESS; "
                        "neither: a local process pool of --workers)")
    p.add_argument("--site", default=None, metavar="NAME",
                   help="site name, lower-case [a-z0-9_]+ (default from config: 'site')")
    p.add_argument("--views", default=None, metavar="FILE",
                   help="CSV/Parquet with sop_instance_uid,view (default: every view 'unknown')")
    p.add_argument("--view-model", default=None, metavar="URI",
                   help="view classifier (models:/NAME@ALIAS, models:/NAME/VERSION or a "
                        "directory; `echocmr views train`) that labels every kept clip's view "
                        "and confidence; a --views row still wins, disagreements are counted "
                        "(docs/views.md)")
    p.add_argument("--view-threshold", type=float, default=None, metavar="P",
                   help="confidence below which the view model's call is 'unknown' (default: "
                        "the model's own, 0.8)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow URI for --view-model (default: MLFLOW_TRACKING_URI, else "
                        "sqlite:///mlflow.db)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="worker processes without Ray (default: all cores)")
    p.add_argument("--clip-size", type=int, default=None, metavar="N",
                   help="side of the stored square clips, even (overrides preprocess.size; "
                        "default 144, which the GPU decoder accepts; the model's input size is "
                        "train's data.size)")
    p.add_argument("--strict-jpeg-check-frames", type=int, default=None, metavar="N",
                   help="8-bit JPEG frames per clip decoded a second time, strictly, to catch "
                        "damaged frames (overrides preprocess.read.strict_jpeg_check_frames; "
                        "default 32; 0: off, faster, and some damaged frames are then shipped)")
    p.add_argument("--config", default=None, metavar="FILE", help="YAML config (docs/ingest.md)")
    p.add_argument("--allow-public-demo-key", action="store_true", default=None,
                   help="without ECHOCMR_SPLIT_KEY or splits.split_key, hash with the public "
                        "demo key even though the input is not an `echocmr synth` cohort "
                        "(anyone can then reverse the patient hashes; for throwaway tests only)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config as YAML and exit without ingesting")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from echocmr.config import resolve_for_command
    from echocmr.ingest.config import load_config

    if args.workers is not None and args.workers < 1:
        print("echocmr ingest: --workers must be >= 1", file=sys.stderr)
        return 2
    config, done = resolve_for_command(
        "ingest", lambda: load_config(
            args.config, site=args.site, workers=args.workers, view_model=args.view_model,
            preprocess=_preprocess_overrides(args),
            splits=None if not args.allow_public_demo_key else {"allow_public_demo_key": True}),
        print_config=args.print_config,
        required={"--dicom": args.dicom, "--labels": args.labels, "--out": args.out})
    if done is not None:
        return done
    from echocmr.ingest.job import run_ingest
    from echocmr.shards.lock import OutputLocked

    try:
        classifier = _view_classifier(config, args)
        summary = run_ingest(args.dicom, args.labels, args.out, config=config,
                             views_path=args.views, progress=not args.no_progress,
                             address=args.address, view_classifier=classifier)
    except (FileNotFoundError, ValueError, OutputLocked) as exc:
        logging.getLogger("echocmr.ingest").debug("ingest failed", exc_info=True)
        print(f"echocmr ingest: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # an unwritable --out, a full disk: one line, not a traceback
        logging.getLogger("echocmr.ingest").debug("ingest failed", exc_info=True)
        what = exc.strerror or str(exc)
        print(f"echocmr ingest: {what}: {exc.filename}" if exc.filename else
              f"echocmr ingest: {what}", file=sys.stderr)
        return 2
    print(summary.format())
    return 0


def _view_classifier(config, args: argparse.Namespace):
    """The view classifier ``config.view_model`` names (None without one), loaded here in the
    command line (ingest's library code never imports the model package); the config then
    names the exact version (``models:/NAME@ALIAS`` -> ``models:/NAME/VERSION``)."""
    if config.view_model is None:
        if args.view_threshold is not None:
            raise ValueError("--view-threshold needs --view-model")
        return None
    from echocmr.model.view_store import load_view_classifier

    classifier = load_view_classifier(config.view_model, tracking_uri=args.tracking_uri,
                                      threshold=args.view_threshold)
    logging.getLogger("echocmr.ingest").info("view model %s (threshold %.2f)",
                                             classifier.source, classifier.threshold)
    config.view_model = classifier.source
    # Workers get the numpy twin (`model.view_numpy`): the same calls without importing torch,
    # about 1.5 CPU s per worker process (docs/benchmarks.md, "View classifier").
    return classifier.portable()


def _preprocess_overrides(args: argparse.Namespace) -> dict | None:
    """The preprocess keys set by flags (None: none)."""
    out: dict = {}
    if args.clip_size is not None:
        out["size"] = args.clip_size
    if args.strict_jpeg_check_frames is not None:
        out["read"] = {"strict_jpeg_check_frames": args.strict_jpeg_check_frames}
    return out or None
