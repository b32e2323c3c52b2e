"""Benchmark: ingest throughput (clips/s) with 1 and 2 workers, against the plain way.

The plain way is what a user would write without echocmr, as in common echo-AI code: for each
file, pydicom's ``pixel_array`` (YCbCr converted to RGB), OpenCV ``resize`` of every frame to
112x112, one AVI per clip with ``cv2.VideoWriter`` (MJPG), in one process. It does none of
ingest's work beyond that (no sector mask, no frame-rate resampling, no labels, no shards), so a
ratio above 1 is ingest being faster while doing more.

Input: a synthetic cohort from `ingest.synth` (several vendors: JPEG baseline YBR, JPEG-LS,
native; 480x640 to 768x1024 pixels), generated once and cached under
``/tmp/echocmr-bench-ingest``. Both ways process the same files: the plain way takes exactly the
files ingest kept. Clips/s counts kept clips over the whole wall time of a run (pool start-up,
pairing, encoding and shard writing included for ingest).

Every input file is read once before the runs, so the first run does not pay for a cold page
cache.

The main run also ingests on one worker with the text detector off, so the per-core ratio is
printed both ways (the OCR pass is most of a kept clip's cost).

``--decode`` instead measures the JPEG-baseline decode alone on the cohort's JPEG clips, per
frame on one core: pydicom's ``pixel_array`` (the plain way), echocmr's luma path with the
second, pylibjpeg-libjpeg decoder on 32 sampled frames and without it, the damage each decoder
sees (300 damaged frames; pylibjpeg's read pass, which ingest runs, checked against its full
decode run by run), pylibjpeg's cost per frame both ways, and libjpeg-turbo's
DCT-scaled decode at 1/2, 1/4 and 1/8 with its mean absolute difference to the full-resolution
decode (box-averaged to the same size, and both resized to a 144-pixel-high output), and where a
kept clip's CPU time goes on one core, with the text detector of before issue 22 (sampled frames
only) run on the same clips for the before/after ratio of the whole clip.

``--text-detector`` instead measures what the OCR pass (`ingest.text_detector`, on by default)
costs: ingest with 2 workers, detector on against detector off, on the same cohort, and prints
the throughput ratio on/off and the detector's cost per kept clip.

``--encoder`` instead encodes the cohort's prepared clips (decoded and preprocessed as ingest does)
with VP9 at ``cpu-used`` 4..8 under libvpx's "good" and "realtime" deadlines and prints, per
setting, CPU seconds per clip, KB per clip, the decoded clip's mean / 99th-percentile / largest
absolute error against the input frames (grey levels), and whether a second encode gave the same
bytes.

``--ray`` instead runs ingest as Ray tasks (`ingest.distributed`) on a
``ray.cluster_utils.Cluster`` of 1 and then 2 nodes of 1 CPU each, prints the wall time of each
(connection to the running cluster, file tasks, shard tasks, manifest; not the cluster's start)
and checks that both wrote byte-identical sets. On a 2-core machine this is a correctness run:
the driver, the Ray daemons of each node and the tasks share the same two cores, so a second node
adds no CPU (docs/ingest.md, "Ingest a whole archive", says what scaling to expect on a real
cluster).

Run: ``.venv/bin/python -m bench.bench_ingest [--patients 10] [--text-detector | --decode | --encoder | --ray]`` (or
``make bench``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import time

CACHE = "/tmp/echocmr-bench-ingest"


def _cohort(patients: int) -> str:
    from echocmr.ingest.synth.generate import generate_cohort

    root = os.path.join(CACHE, f"cohort-{patients}")
    if not os.path.exists(os.path.join(root, "synth_truth.parquet")):
        print(f"generating a synthetic cohort of {patients} patients in {root} (once)", flush=True)
        generate_cohort(root, patients=patients, seed=17, overwrite=True, progress=False)
    return root


def _warm(root: str) -> int:
    """Read every input file once, so no way pays for a cold page cache; returns bytes."""
    total = 0
    for dirpath, _, files in os.walk(os.path.join(root, "dicom")):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                while chunk := f.read(1 << 24):
                    total += len(chunk)
    return total


def _run_ingest(root: str, workers: int, detector: bool = True) -> tuple[float, int, list[str]]:
    from echocmr.ingest.config import IngestConfig, TextDetectorConfig
    from echocmr.ingest.job import run_ingest
    from echocmr.shards.format import INGEST_REPORT_FILE

    out = os.path.join(CACHE, f"out-{workers}-{'ocr' if detector else 'no-ocr'}")
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    config = IngestConfig(site="bench", workers=workers,
                          text_detector=TextDetectorConfig(enabled=detector))
    summary = run_ingest(os.path.join(root, "dicom"), os.path.join(root, "cmr_labels.parquet"),
                         out, config=config,
                         views_path=os.path.join(root, "views.csv"), progress=False)
    seconds = time.perf_counter() - t0
    import pyarrow.parquet as pq

    report = pq.read_table(os.path.join(out, INGEST_REPORT_FILE)).to_pylist()
    kept = [r["source"] for r in report if r["status"] == "kept"]
    return seconds, summary.kept, kept


def _plain_way(root: str, sources: list[str]) -> float:
    """pydicom RGB pixel_array -> cv2.resize per frame -> one MJPG AVI per clip."""
    import cv2
    import numpy as np
    import pydicom

    out = os.path.join(CACHE, "out-plain")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    t0 = time.perf_counter()
    for i, source in enumerate(sources):
        ds = pydicom.dcmread(os.path.join(root, "dicom", source))
        frames = ds.pixel_array  # YBR is converted to RGB here
        if frames.ndim == 3:  # grey: make it 3-channel as a video writer wants
            frames = np.repeat(frames[..., None], 3, axis=-1)
        fps = float(ds.get("RecommendedDisplayFrameRate", 0) or ds.get("CineRate", 0) or 30)
        writer = cv2.VideoWriter(os.path.join(out, f"{i:05d}.avi"),
                                 cv2.VideoWriter_fourcc(*"MJPG"), fps, (112, 112))
        for frame in frames:
            small = cv2.resize(frame, (112, 112), interpolation=cv2.INTER_AREA)
            writer.write(cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
        writer.release()
    return time.perf_counter() - t0


def _jpeg_datasets(root: str) -> list:
    import pydicom

    out = []
    for dirpath, _, files in sorted(os.walk(os.path.join(root, "dicom"))):
        for name in sorted(files):
            ds = pydicom.dcmread(os.path.join(dirpath, name))
            if str(ds.file_meta.get("TransferSyntaxUID", "")) == "1.2.840.10008.1.2.4.50":
                out.append(ds)
    return out


def _decode(root: str) -> None:
    """Per-frame JPEG-baseline decode cost, and what DCT scaling would save and change."""
    import numpy as np
    import simplejpeg
    from PIL import Image
    from pydicom.encaps import generate_frames

    from echocmr.ingest.jpeg import decode_jpeg_luma

    datasets = _jpeg_datasets(root)
    n_frames = sum(int(ds.get("NumberOfFrames", 1) or 1) for ds in datasets)
    print(f"{len(datasets)} JPEG-baseline clips, {n_frames} frames "
          f"({', '.join(sorted({f'{ds.Columns}x{ds.Rows}' for ds in datasets}))}); one core")

    def per_frame(fn) -> float:
        t0 = time.perf_counter()
        for ds in datasets:
            fn(ds)
        return (time.perf_counter() - t0) / n_frames * 1000

    plain = per_frame(lambda ds: ds.pixel_array)
    with_second = per_frame(lambda ds: decode_jpeg_luma(ds, strict_frames=32))
    turbo_only = per_frame(lambda ds: decode_jpeg_luma(ds, strict_frames=0))
    print(f"  plain way (pydicom pixel_array, RGB)           {plain:6.2f} ms/frame")
    print(f"  echocmr luma, strict turbo + pylibjpeg on 32   {with_second:6.2f} ms/frame  "
          f"({plain / with_second:.1f}x the plain way)")
    print(f"  echocmr luma, strict turbo only                {turbo_only:6.2f} ms/frame  "
          f"({plain / turbo_only:.1f}x)")
    codestreams = [bytes(f) for ds in datasets for f in generate_frames(
        ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1) or 1))]
    shapes = [(int(ds.Rows), int(ds.Columns)) for ds in datasets
              for _ in range(int(ds.get("NumberOfFrames", 1) or 1))]
    import libjpeg

    from echocmr.ingest.jpeg import _full_decode_problem, _strict_decode_problem

    sample = codestreams[::max(len(codestreams) // 64, 1)]
    for name, check in (("full decode (libjpeg.decode)", lambda c: _full_decode_problem(libjpeg, c)),
                        ("read pass only (ingest)", _strict_decode_problem)):
        t0 = time.process_time()
        for c in sample:
            check(c)
        print(f"  pylibjpeg-libjpeg, {name:<29} {(time.process_time() - t0) / len(sample) * 1000:6.2f}"
              f" ms/frame (CPU, {len(sample)} frames)")

    def turbo(scale: int) -> tuple[float, list]:
        t0 = time.perf_counter()
        out = [simplejpeg.decode_jpeg(c, colorspace="GRAY", min_height=-(-h // scale),
                                      min_width=-(-w // scale))[..., 0]
               for c, (h, w) in zip(codestreams, shapes, strict=True)]
        return (time.perf_counter() - t0) / len(codestreams) * 1000, out

    def resized(frame: np.ndarray) -> np.ndarray:
        h, w = frame.shape
        image = Image.fromarray(frame).resize((round(w * 144 / h), 144), Image.Resampling.BILINEAR)
        return np.asarray(image, dtype=np.float64)

    _damage_counts(datasets[0])
    _stages(root)
    t_full, full = turbo(1)
    print(f"  turbo luma, full scale                         {t_full:6.2f} ms/frame")
    every = max(len(full) // 60, 1)  # the differences on ~60 frames spread over the clips
    for scale in (2, 4, 8):
        t_s, small = turbo(scale)
        box, out = [], []
        for f, s in zip(full[::every], small[::every], strict=True):
            h, w = s.shape
            down = f[:h * scale, :w * scale].reshape(h, scale, w, scale).mean(axis=(1, 3))
            box.append(np.abs(down - s).mean())
            out.append(np.abs(resized(f) - resized(s)).mean())
        print(f"  turbo luma, 1/{scale} scale (DCT scaling)           {t_s:6.2f} ms/frame  "
              f"({t_full / t_s:.2f}x full); mean |diff| {np.mean(box):.2f} grey levels at "
              f"1/{scale}, {np.mean(out):.2f} at a 144-pixel-high output")


def _stages(root: str) -> None:
    """Where a kept clip's time goes on one core: read + decode, sector/mask/resize, OCR, VP9.

    CPU time of this process (every stage runs on one thread), so a busy machine inflates it
    less than wall time. The text detector is also run with only its sampled frames read (no
    composite, no follow-up, no turned reads: the detector before issue 22) on the same clips,
    for the before/after ratio of the whole clip, and without each of its later steps in turn
    (the stroke reads, `ingest.text_strokes`; the dark strokes, `ingest.text_dark_strokes`, and
    their rereads, ``dark_stroke_rereads``), clip
    by clip in turn with the defaults, for each step's share."""
    from dataclasses import replace

    from echocmr.ingest.config import IngestConfig
    from echocmr.ingest.dicom_header import check_cine, load_dataset
    from echocmr.ingest.dicom_io import clip_from_dataset
    from echocmr.ingest.encode import encode_webm
    from echocmr.ingest.preprocess import preprocess_clip
    from echocmr.ingest.reasons import RejectedInput
    from echocmr.ingest.worker import detect_text

    config = IngestConfig(site="bench")
    sampled_only = replace(config, text_detector=replace(
        config.text_detector, composites=False, track_step=0, orientations=False,
        dark_composite=False, motion_bands=0, line_reads=False, stroke_reads=0, dark_strokes=0))
    spent = {"read + decode": 0.0, "sector, mask, resize": 0.0, "text detector": 0.0,
             "VP9 encode": 0.0}
    before = 0.0  # the text detector reading its sampled frames only
    # the text detector of today without one of its steps: its CPU s over the clips
    without = {step: [replace(config, text_detector=replace(config.text_detector, **off)), 0.0]
               for step, off in (("stroke reads", {"stroke_reads": 0}),
                                 ("dark strokes", {"dark_strokes": 0}),
                                 ("dark-stroke rereads", {"dark_stroke_rereads": False}))}
    kept = 0
    clock = time.process_time
    for dirpath, _, files in sorted(os.walk(os.path.join(root, "dicom"))):
        for name in sorted(files):
            t0 = clock()
            try:
                ds = load_dataset(os.path.join(dirpath, name))
                check_cine(ds, config.preprocess.read)
                clip = clip_from_dataset(ds, config.preprocess.read)
                t1 = clock()
                prepared = preprocess_clip(clip, config.preprocess)
            except RejectedInput:
                continue
            t2 = clock()
            detect_text(prepared.frames_THW.copy(), sampled_only)
            before += clock() - t2
            for entry in without.values():
                t2 = clock()
                detect_text(prepared.frames_THW.copy(), entry[0])
                entry[1] += clock() - t2
            t2 = clock()
            detect_text(prepared.frames_THW, config)
            t3 = clock()
            encode_webm(prepared.frames_THW, prepared.fps, config.encoder)
            t4 = clock()
            for key, dt in zip(spent, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                spent[key] += dt
            kept += 1
    total = sum(spent.values())
    print(f"  per kept clip on one core, CPU s ({kept} clips, default config): "
          + ", ".join(f"{k} {v / kept:.3f} s ({v / total:.0%})" for k, v in spent.items()))
    old = total - spent["text detector"] + before
    print(f"  text detector reading its sampled frames only (before issue 22): {before / kept:.3f} s"
          f" a clip; the whole clip {old / kept:.3f} s then, {total / kept:.3f} s now "
          f"({total / old:.2f}x)")
    for step, (_, spent_without) in without.items():
        plain = total - spent["text detector"] + spent_without
        print(f"  text detector without its {step}: {spent_without / kept:.3f} s a clip; the "
              f"whole clip {plain / kept:.3f} s, {plain / old:.2f}x the cost before issue 22 "
              f"(with them {total / old:.2f}x)")


def _damage_counts(ds, trials: int = 300) -> None:
    """Which decoder sees a damaged frame: runs of 4, 16 or 80 bytes overwritten (zeros, or
    random bytes without 0xFF) at random places in one frame's entropy-coded data. Also checks,
    run by run, that pylibjpeg's read pass alone (`jpeg._strict_decode_problem`) gives the
    verdict and message of its full decode."""
    import libjpeg
    import numpy as np
    import simplejpeg
    from pydicom.encaps import generate_frames

    from echocmr.ingest.jpeg import _full_decode_problem, _strict_decode_problem

    frames = list(generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1)
                                                                       or 1)))
    rng = np.random.default_rng(0)
    seen = {"both": 0, "turbo strict only": 0, "pylibjpeg only": 0, "neither": 0}
    disagree = 0
    for trial in range(trials):
        data = bytearray(frames[trial % len(frames)])
        sos = data.find(b"\xff\xda")
        start = sos + 2 + int.from_bytes(data[sos + 2:sos + 4], "big")
        length = int(rng.choice([4, 16, 80]))
        at = int(rng.integers(start, len(data) - 2 - length))
        data[at:at + length] = bytes(length) if trial % 2 else \
            rng.integers(0, 255, length, dtype=np.uint8).tobytes().replace(b"\xff", b"\x00")
        data = bytes(data)
        try:
            simplejpeg.decode_jpeg(data, colorspace="GRAY", strict=True)
            turbo = False
        except ValueError:
            turbo = True
        full = _full_decode_problem(libjpeg, data)  # libjpeg.decode: read pass + pixels
        second = full is not None
        disagree += _strict_decode_problem(data) != full  # the read pass alone, as ingest runs it
        seen["both" if turbo and second else "turbo strict only" if turbo
             else "pylibjpeg only" if second else "neither"] += 1
    print(f"  {trials} damaged frames ({ds.Columns}x{ds.Rows}): seen by "
          + ", ".join(f"{k} {v}" for k, v in seen.items()))
    print(f"  pylibjpeg's read pass alone (what ingest runs) against its full decode: "
          f"{trials - disagree} of {trials} damaged frames with the same verdict and message")
    if disagree:
        raise RuntimeError(f"pylibjpeg's read pass and full decode disagree on {disagree} frames")


def _prepared_clips(root: str) -> list:
    """The cohort's kept clips as ingest hands them to the encoder (text detector off: masking a
    few boxes does not change what the encoder costs)."""
    from echocmr.ingest.config import IngestConfig
    from echocmr.ingest.dicom_header import check_cine, load_dataset
    from echocmr.ingest.dicom_io import clip_from_dataset
    from echocmr.ingest.preprocess import preprocess_clip
    from echocmr.ingest.reasons import RejectedInput

    config = IngestConfig(site="bench")
    clips = []
    for dirpath, _, files in sorted(os.walk(os.path.join(root, "dicom"))):
        for name in sorted(files):
            try:
                ds = load_dataset(os.path.join(dirpath, name))
                check_cine(ds, config.preprocess.read)
                clips.append(preprocess_clip(clip_from_dataset(ds, config.preprocess.read),
                                             config.preprocess))
            except RejectedInput:
                continue
    return clips


def _encoder(root: str) -> None:
    """VP9 settings on the cohort's prepared clips, one core: CPU seconds per clip, bytes, and
    the decoded clip's error against the frames that went in (grey levels, as DALI decodes)."""
    import numpy as np

    from echocmr.ingest.encode import EncoderConfig, decode_webm, encode_webm

    clips = _prepared_clips(root)
    n_frames = sum(c.n_frames for c in clips)
    print(f"{len(clips)} prepared clips, {n_frames} frames of "
          f"{clips[0].frames_THW.shape[1]}x{clips[0].frames_THW.shape[2]}; crf 20, 1 thread, "
          "row-mt 0; CPU time of the encode alone, best of 2")
    print(f"  {'deadline':<9} {'cpu-used':>8} {'s/clip':>7} {'KB/clip':>8} {'MAE':>6} "
          f"{'p99 err':>7} {'max err':>7} {'deterministic':>13}")
    for deadline in ("good", "realtime"):
        for cpu_used in range(4, 9):
            config = EncoderConfig(cpu_used=cpu_used, deadline=deadline)
            best, videos = float("inf"), []
            for _ in range(2):
                t0 = time.process_time()
                videos = [encode_webm(c.frames_THW, c.fps, config) for c in clips]
                best = min(best, time.process_time() - t0)
            again = [encode_webm(c.frames_THW, c.fps, config) for c in clips]
            errors = []
            for clip, video in zip(clips, videos, strict=True):
                decoded, _ = decode_webm(video)
                errors.append(np.abs(decoded.astype(np.int16) - clip.frames_THW).ravel())
            err = np.concatenate(errors)
            print(f"  {deadline:<9} {cpu_used:>8} {best / len(clips):7.4f} "
                  f"{sum(map(len, videos)) / len(clips) / 1000:8.1f} {err.mean():6.3f} "
                  f"{np.percentile(err, 99):7.0f} {err.max():7d} {str(again == videos):>13}",
                  flush=True)


def _digests(out: str) -> dict[str, str]:
    import hashlib

    return {os.path.relpath(os.path.join(d, n), out):
            hashlib.sha256(open(os.path.join(d, n), "rb").read()).hexdigest()
            for d, _, names in os.walk(out) for n in names}


def _run_on_ray(root: str, nodes: int) -> tuple[float, int, dict[str, str]]:
    """Ingest on a fresh local cluster of ``nodes`` nodes (1 CPU each): (seconds, kept, digests)."""
    from echocmr.cluster.inprocess import temporary_cluster
    from echocmr.ingest.config import IngestConfig, ShardConfig
    from echocmr.ingest.job import run_ingest

    out = os.path.join(CACHE, f"out-ray-{nodes}")
    shutil.rmtree(out, ignore_errors=True)
    with temporary_cluster([{"num_cpus": 1}] * nodes, connect=False) as cluster:
        t0 = time.perf_counter()
        summary = run_ingest(os.path.join(root, "dicom"), os.path.join(root, "cmr_labels.parquet"),
                             out, config=IngestConfig(site="bench", shards=ShardConfig(
                                 samples_per_shard=4)),  # several shard tasks, not one
                             views_path=os.path.join(root, "views.csv"), progress=False,
                             address=cluster.address)
        seconds = time.perf_counter() - t0
    return seconds, summary.kept, _digests(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patients", type=int, default=10, help="synthetic cohort size")
    parser.add_argument("--text-detector", action="store_true",
                        help="measure ingest with the text detector on against off")
    parser.add_argument("--decode", action="store_true",
                        help="measure the JPEG decode alone (plain, echocmr, DCT-scaled)")
    parser.add_argument("--encoder", action="store_true",
                        help="measure VP9 settings (cpu-used 4..8, deadline good/realtime)")
    parser.add_argument("--ray", action="store_true",
                        help="ingest as Ray tasks on a local cluster of 1, then 2 nodes")
    args = parser.parse_args([] if argv is None else argv)  # `make bench` passes nothing
    os.environ.setdefault("ECHOCMR_SPLIT_KEY", "bench-key")
    root = _cohort(args.patients)
    print(f"{_warm(root) / 1e6:.0f} MB of DICOM read once to warm the page cache; load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    if args.decode:
        _decode(root)
        return
    if args.encoder:
        _encoder(root)
        return
    if args.ray:
        t1, kept, one = _run_on_ray(root, nodes=1)
        t2, _, two = _run_on_ray(root, nodes=2)
        print(f"{kept} clips kept; ingest as Ray tasks, nodes of 1 CPU each, {os.cpu_count()} "
              f"cores on this machine")
        print(f"  1 node  {t1:7.1f} s  {kept / t1:6.2f} clips/s")
        print(f"  2 nodes {t2:7.1f} s  {kept / t2:6.2f} clips/s")
        same = one == two
        print(f"  outputs byte-identical (sha256 of all {len(one)} files): {same}")
        if not same:
            raise RuntimeError("1-node and 2-node ingests differ: " + ", ".join(
                sorted(k for k in one.keys() | two.keys() if one.get(k) != two.get(k))))
        return
    if args.text_detector:
        # Alternate off/on twice and keep each one's best, so a burst of load on a shared machine
        # does not decide the ratio.
        runs = [_run_ingest(root, workers=2, detector=on) for on in (False, True, False, True)]
        t_off, kept_off, _ = min(runs[0::2])
        t_on, kept_on, _ = min(runs[1::2])
        print(f"{kept_on} clips kept; ingest with 2 workers, {os.cpu_count()} cores")
        print(f"  detector off {t_off:7.1f} s  {kept_off / t_off:6.2f} clips/s")
        print(f"  detector on  {t_on:7.1f} s  {kept_on / t_on:6.2f} clips/s")
        print(f"  ratio on/off (throughput): {(kept_on / t_on) / (kept_off / t_off):.2f}x; "
              f"detector cost {2 * (t_on - t_off) / max(kept_on, 1):.2f} core-s per clip")
        return

    t1, kept1, sources = _run_ingest(root, workers=1)
    t1_off, kept1_off, _ = _run_ingest(root, workers=1, detector=False)
    t2, kept2, _ = _run_ingest(root, workers=2)
    tp = _plain_way(root, sources)
    n = len(sources)
    runs = (("ingest, 1 worker", t1, kept1), ("1 worker, no OCR", t1_off, kept1_off),
            ("ingest, 2 workers", t2, kept2), ("plain way", tp, n))
    print(f"{n} clips (of the cohort's files, the ones ingest keeps); {os.cpu_count()} cores")
    for name, seconds, clips in runs:
        print(f"  {name:<18} {seconds:7.1f} s  {clips / seconds:6.2f} clips/s")
    plain = n / tp
    print(f"  ratio ingest/plain: 1 worker {kept1 / t1 / plain:.2f}x "
          f"({kept1_off / t1_off / plain:.2f}x with the text detector off), "
          f"2 workers {kept2 / t2 / plain:.2f}x")


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
