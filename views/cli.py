"""``echocmr views train``: a view classifier from the labelled clips of a shard set.

Trains `model.views.ViewNet` through the read path (`views.fit`), prints the calibrated
confusion matrix on val, logs the run to MLflow (``--tracking-uri``, else
``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` here) and, with ``--register NAME``,
registers it with its card. docs/views.md is the guide.
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    views = subparsers.add_parser("views", help="the view classifier: train one from labelled "
                                                "clips (docs/views.md)")
    sub = views.add_subparsers(dest="views_command", required=True)
    p = sub.add_parser("train", help="train a view classifier on the clips whose view is known")
    p.add_argument("--shards", required=True, help="shard set with views (ingest --views)")
    p.add_argument("--register", metavar="NAME", help="register the model under NAME")
    p.add_argument("--out", metavar="DIR", help="also write the model directory here")
    p.add_argument("--epochs", type=int, default=10, help="epochs (default 10)")
    p.add_argument("--min-steps", type=int, default=400,
                   help="train at least this many steps, however few the clips (default 400)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--frames", type=int, default=4, help="frames per clip (default 4)")
    p.add_argument("--size", type=int, default=64, help="input side in pixels (default 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threshold", type=float, default=None,
                   help="confidence below which a clip is 'unknown' (default 0.8)")
    p.add_argument("--exclude-site", action="append", metavar="NAME", default=[],
                   help="leave site NAME out (repeatable), to check the model on it later")
    p.add_argument("--gpu", action="store_true", help="decode on NVDEC and train on the GPU")
    p.add_argument("--tracking-uri", help="MLflow URI (default: MLFLOW_TRACKING_URI, else "
                                          "sqlite:///mlflow.db)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging

    import numpy as np

    from echocmr.model.views import DEFAULT_THRESHOLD, format_confusion
    from echocmr.views.fit import ViewTrainConfig, train_view_model

    logging.getLogger("echocmr").setLevel(logging.INFO)
    config = ViewTrainConfig(
        epochs=args.epochs, min_steps=args.min_steps, batch_size=args.batch_size,
        frames=args.frames, size=args.size,
        seed=args.seed, gpu=args.gpu, exclude_sites=tuple(sorted(set(args.exclude_site))),
        threshold=DEFAULT_THRESHOLD if args.threshold is None else args.threshold)
    result = train_view_model(args.shards, config, tracking_uri=args.tracking_uri,
                              register=args.register, out=args.out)
    val = result.val
    print(f"view classifier: {val['n']} val clips, accuracy {100 * val['accuracy']:.1f} % "
          f"(unknown below {val['threshold']:.2f}: {100 * val['unknown_rate']:.1f} %), "
          f"temperature {val['temperature']:.3f}, {result.seconds:.0f} s")
    print(format_confusion(np.asarray(val["confusion"])))
    if result.run_id:
        print(f"MLflow run {result.run_id}; model {result.model_uri}")
    if result.registration:
        r = result.registration
        print(f"registered {r.name} version {r.version} as {r.alias} ({r.decision})")
    if result.artifact_dir:
        print(f"model directory {result.artifact_dir}")
    return 0
