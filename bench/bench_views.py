"""Benchmark: the view classifier on a site it never saw, and what it adds to ingest's CPU.

What is measured.

* Accuracy on a held-out site: a view classifier is trained (`views.fit.train_view_model`, the
  code of ``echocmr views train``; ``--epochs``) on the train and val clips of ``--train``
  shard sets (merged by ``echocmr shards reshard`` when there are several), then every clip of
  the ``--holdout`` set, all splits, is decoded (`ingest.encode.decode_webm`, DALI's values) and
  classified as ingest does (`model.views.ViewClassifier`). The truth is the views table the
  held-out set was ingested with (``--views``; a non-target name counts as ``other``). Printed:
  the confusion matrix, the accuracy on target-view clips (target >= 98 %), the share of
  non-target clips called ``other`` (target >= 95 %), and the ``unknown`` rate.
* Cost at ingest (``--dicom`` and ``--labels`` of the held-out site given): ``echocmr ingest
  --workers 1`` of that site, once without and once with ``--view-model`` (the trained model's
  directory), each into a fresh directory; CPU seconds (user + sys of the finished child
  processes) per kept clip, and the ratio (target: the model adds <= 10 %). Also the classifier's
  own CPU seconds per clip in this process (one thread, as in a worker).

``--view-model DIR`` measures a model trained before (``echocmr views train --out DIR``) instead
of training one.

Run (a synthetic cohort ingested per site with its views table, docs/views.md)::

    python -m bench.bench_views --train SHARDS/northfield --train SHARDS/riverside \
        --holdout SHARDS/st_elsewhere --epochs 30 \
        --dicom COHORT/dicom/st_elsewhere --labels COHORT/cmr_labels.parquet
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _merge(sets: list[str], tmp: str) -> str:
    if len(sets) == 1:
        return sets[0]
    out = os.path.join(tmp, "train_set")
    subprocess.run([sys.executable, "-m", "echocmr", "shards", "reshard", "--input", *sets,
                    "--out", out], check=True, stdout=subprocess.DEVNULL)
    return out


def holdout_confusion(classifier, holdout: str):
    """``(confusion [4, 5], CPU s per clip)`` of the classifier over every clip of ``holdout``."""
    import torch

    from echocmr.ingest.encode import decode_webm
    from echocmr.model.views import VIEW_CLASSES, confusion
    from echocmr.shards.format import VIEW_UNKNOWN, view_class
    from echocmr.shards.reader import iter_samples

    torch.set_num_threads(1)
    truth, pred, best, cpu = [], [], [], 0.0
    for sample in iter_samples(holdout):
        true = view_class(sample.meta.view)
        if true == VIEW_UNKNOWN:
            continue
        frames, _ = decode_webm(sample.video)
        t0 = time.process_time()
        call = classifier(frames)
        cpu += time.process_time() - t0
        truth.append(VIEW_CLASSES.index(true))
        pred.append(len(VIEW_CLASSES) if call.view == VIEW_UNKNOWN
                    else VIEW_CLASSES.index(call.view))
        best.append(VIEW_CLASSES.index(call.best))
    t = np.array(truth)
    raw = float((np.array(best) == t).mean()) if len(t) else 0.0
    return confusion(t, np.array(pred)), cpu / max(len(truth), 1), raw


def ingest_cpu(dicom: str, labels: str, site: str, out: str, view_model: str | None) -> tuple:
    """``(CPU s per kept clip, kept clips)`` of one ``echocmr ingest --workers 1``."""
    import pandas as pd

    cmd = [sys.executable, "-m", "echocmr", "ingest", "--dicom", dicom, "--labels", labels,
           "--out", out, "--site", site, "--workers", "1", "--no-progress"]
    if view_model:
        cmd += ["--view-model", view_model]
    before = _children_cpu()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    used = _children_cpu() - before
    report = pd.read_parquet(os.path.join(out, "ingest_report.parquet"))
    kept = int((report["status"] == "kept").sum())
    return used / max(kept, 1), kept


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", action="append", help="shard set to train on")
    p.add_argument("--view-model", metavar="DIR",
                   help="a trained view model's directory (views train --out): measure it, "
                        "train nothing")
    p.add_argument("--holdout", required=True, help="shard set of the held-out site")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--dicom", help="the held-out site's DICOMs (for the ingest cost)")
    p.add_argument("--labels", help="the CMR label table (for the ingest cost)")
    args = p.parse_args(argv)

    from echocmr.model.views import VIEW_CLASSES, ViewClassifier, format_confusion, read_view_model
    from echocmr.shards.reader import read_manifest
    from echocmr.views.fit import ViewTrainConfig, train_view_model

    if not args.train and not args.view_model:
        p.error("give --train (shard sets to train on) or --view-model (a trained model)")
    with tempfile.TemporaryDirectory(prefix="echocmr-bench-views-") as tmp:
        if args.view_model:
            artifact_dir = args.view_model
        else:
            train_set = _merge(args.train, tmp)
            started = time.perf_counter()
            result = train_view_model(train_set, ViewTrainConfig(
                epochs=args.epochs, seed=args.seed, batch_size=args.batch_size),
                out=os.path.join(tmp, "vm"), track=False)
            print(f"trained on {result.train_sites} ({result.counts}) in "
                  f"{time.perf_counter() - started:.0f} s; val accuracy "
                  f"{100 * result.val['accuracy']:.1f} % on {result.val['n']} clips", flush=True)
            artifact_dir = result.artifact_dir
        classifier = ViewClassifier(read_view_model(artifact_dir))
        matrix, cpu, raw = holdout_confusion(classifier, args.holdout)
        site = sorted(read_manifest(args.holdout)["site"].unique())
        print(f"\nheld-out site {', '.join(site)}: {int(matrix.sum())} clips with a known view")
        print(format_confusion(matrix))
        k = len(VIEW_CLASSES) - 1  # `other`
        target = matrix[:k]
        acc = np.trace(target[:, :k]) / max(target.sum(), 1)
        other = matrix[k, k] / max(matrix[k].sum(), 1)
        unknown = matrix[:, -1].sum() / max(matrix.sum(), 1)
        print(f"target views right: {100 * acc:.1f} % of {int(target.sum())} (target >= 98 %)")
        print(f"non-target clips called other: {100 * other:.1f} % of {int(matrix[k].sum())} "
              "(target >= 95 %)")
        print(f"unknown: {100 * unknown:.1f} %; top class right, threshold ignored: "
              f"{100 * raw:.1f} %; classifier CPU {1000 * cpu:.1f} ms per clip (one thread)")
        if args.dicom and args.labels:
            base, kept = ingest_cpu(args.dicom, args.labels, site[0], os.path.join(tmp, "a"),
                                    None)
            with_model, _ = ingest_cpu(args.dicom, args.labels, site[0], os.path.join(tmp, "b"),
                                       artifact_dir)
            print(f"ingest CPU per kept clip ({kept} clips, --workers 1): {base:.3f} s without, "
                  f"{with_model:.3f} s with --view-model: +{100 * (with_model / base - 1):.1f} % "
                  "(target <= 10 %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
