"""``echocmr synth``: write a synthetic echo-CMR cohort (imports nothing heavy until run)."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "synth",
        help="write a synthetic cohort: DICOM echo clips, CMR labels, view map, ground truth",
        description="Write a synthetic echo-CMR cohort under --out: dicom/<vendor>/<patient>/"
        "<study>/*.dcm, cmr_labels.parquet/.csv, views.csv and synth_truth.parquet. "
        "The same --seed gives byte-identical files.",
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--patients", type=int, default=200, help="number of patients (default 200)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--label-model", default="study", metavar="NAME",
                   help="how labels are drawn (ingest.synth.labels.LABEL_MODELS): 'study' "
                        "(default; prevalences and missingness like the published cohort) or "
                        "'demo' (same dependencies, tissue labels common and mostly measured, "
                        "LGE following WMA more closely: what `echocmr demo` uses)")
    p.add_argument("--workers", type=int, default=None,
                   help="processes (default: every core; 1 = no pool)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a cohort already in --out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from echocmr.ingest.synth.cohort import CohortConfig
    from echocmr.ingest.synth.generate import generate_cohort
    from echocmr.ingest.synth.labels import label_model

    if args.patients < 1:
        raise SystemExit("--patients must be at least 1")
    if args.workers is not None and args.workers < 1:
        raise SystemExit("--workers must be at least 1")
    try:
        labels = label_model(args.label_model)
    except ValueError as exc:
        raise SystemExit(f"--label-model: {exc}") from None
    try:
        summary = generate_cohort(args.out, patients=args.patients, seed=args.seed,
                                  workers=args.workers, overwrite=args.overwrite,
                                  config=CohortConfig(patients=args.patients, seed=args.seed,
                                                      labels=labels))
    except FileExistsError as exc:
        raise SystemExit(str(exc)) from None
    print(json.dumps({**summary, "label_model": args.label_model}, indent=2))
    return 0
