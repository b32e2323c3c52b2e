"""Benchmark: loader clips/s into training tensors, and bytes on disk per clip, against the plain way.

What is compared. The same clips held two ways:

* ours: a shard set (VP9 WebM in WebDataset tars + DALI ``.idx`` files) read by
  `read.loader.ClipLoader` with ``train=True`` (shuffle, random clip start, pad-and-crop and
  intensity augmentation) on DALI's CPU video decoder with ``data.num_threads = N``;
* plain: what EchoNet-Dynamic-style code has and does. A folder of AVIs (one per clip, written by
  ``cv2.VideoWriter`` as MJPG, 3-channel BGR, OpenCV's default quality) plus a ``FileList.csv`` of
  labels and splits; a `torch.utils.data.Dataset` whose ``__getitem__`` opens the AVI with
  ``cv2.VideoCapture``, reads every frame (as typical code does: it reads the whole file rather
  than seeking), converts to grey, takes the same clip (frames and period of the preset, random
  start), resizes those frames with ``cv2.resize`` (INTER_AREA), pads and randomly crops, applies
  the same contrast/brightness jitter and normalises, returning ``float32[1, T, S, S]`` and the
  labels; wrapped in ``torch.utils.data.DataLoader(num_workers=N, batch_size=B, shuffle=True)``.

Why it is fair. Both ways start from the same pictures (the AVIs are written from the shards'
clips as decoded by ``ingest.encode.decode_webm``, which gives DALI's values, grey copied into
B, G and R), produce the same kind of tensors (the ``cpu-small`` preset's clip shape and batch
size, the same augmentation, normalised with the train mean/std; the values differ only by
MJPG's loss and the resize filter), and use N workers (DALI threads against DataLoader processes) for N in 1, 2. The plain way is
competent, not padded: it samples before resizing and normalising (only the T frames it keeps),
and leaves OpenCV's own threading at its defaults, as users do. Each figure is the second of two
epochs over the train split (the first warms the page cache, imports and thread pools); that
second epoch includes building DALI's pipeline (one per epoch) and starting the DataLoader's
workers (``persistent_workers=False``, the default), the start-up each way pays per epoch. CPU
seconds per clip (this process and its finished children) are shown beside clips/s, since
OpenCV and DALI may use more threads than N.

Bytes on disk per clip: the shard set's tars and ``.idx`` files over its clip count, the mean
``.webm`` member alone, the mean MJPG AVI (with MJPG's own error, read back), and the raw uint8
grey size for reference.

Run: ``.venv/bin/python -m bench.bench_loader`` (or ``make bench``). It writes everything to a
temp dir and removes it; about 40 s on 2 cores.
"""

from __future__ import annotations

import csv
import os
import resource
import sys
import tempfile
import time
from dataclasses import replace

import numpy as np

N_PATIENTS = 32  # x 3 clips = 96 clips, ~58 in the train split
CLIPS_PER_PATIENT = 3
N_FRAMES = 72
SIZE = 112
FPS = 30.0
WORKERS = (1, 2)


def make_shards(out_dir: str) -> str:
    """The test fixture's clips (the synthetic phantom heart, beating or still) as a shard set."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tests"))
    from _shards_fixtures import make_shard_set

    return make_shard_set(out_dir, n_patients=N_PATIENTS, clips_per_patient=CLIPS_PER_PATIENT,
                          n_frames=N_FRAMES, size=SIZE, fps=FPS, samples_per_shard=8)


def write_avis(shards: str, out_dir: str) -> tuple[str, float]:
    """One MJPG AVI per clip of ``shards`` plus ``FileList.csv`` (EchoNet layout).

    Returns the CSV's path and MJPG's mean absolute error in grey levels (each AVI read back and
    compared with the frames written to it): the AVIs are lossy too, so their size is no
    lossless reference.
    """
    import cv2

    from echocmr.ingest.encode import decode_webm
    from echocmr.shards.format import TASKS
    from echocmr.shards.reader import iter_samples

    videos = os.path.join(out_dir, "Videos")
    os.makedirs(videos)
    rows, errors = [], []
    for sample in iter_samples(shards):
        grey, _ = decode_webm(sample.video)  # the values DALI's decoder gives
        frames = np.repeat(grey[..., None], 3, axis=-1)  # BGR, as video writers are fed
        name = f"{sample.key}.avi"
        height, width = frames.shape[1:3]
        writer = cv2.VideoWriter(os.path.join(videos, name), cv2.VideoWriter_fourcc(*"MJPG"),
                                 float(sample.meta.fps), (width, height))
        if not writer.isOpened():
            raise RuntimeError("cv2.VideoWriter cannot write MJPG AVI here")
        for frame in frames:
            writer.write(frame)
        writer.release()
        errors.append(np.abs(read_grey(os.path.join(videos, name)).astype(np.int16) - grey).mean())
        labels = ["" if np.isnan(v) else f"{v:g}" for v in sample.labels]
        rows.append([name, sample.meta.split.upper(), *labels])
    file_list = os.path.join(out_dir, "FileList.csv")
    with open(file_list, "w", newline="") as f:
        csv.writer(f).writerows([["FileName", "Split", *TASKS], *rows])
    return file_list, float(np.mean(errors))


def read_grey(path: str) -> np.ndarray:
    """``uint8[T, H, W]``: every frame of a video file, read with OpenCV and converted to grey."""
    import cv2

    capture = cv2.VideoCapture(path)
    grey = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        grey.append(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY))
    capture.release()
    if not grey:
        raise ValueError(f"{path}: no frames")
    return np.stack(grey)


class AviClips:
    """The plain way's `torch.utils.data.Dataset`: one AVI per clip, read whole with OpenCV.

    Item ``i``: ``(float32[1, T, S, S], float32[K] labels with NaN unknown)``; random clip start,
    random pad-and-crop and intensity jitter as ``augment`` says (EchoNet-Dynamic's ``pad``).
    """

    def __init__(self, file_list: str, split: str, *, frames: int, period: int, size: int,
                 mean: float, std: float, pad: int, contrast: float, brightness: float) -> None:
        from echocmr.shards.format import TASKS

        folder = os.path.join(os.path.dirname(file_list), "Videos")
        with open(file_list, newline="") as f:
            rows = [r for r in csv.DictReader(f) if r["Split"] == split.upper()]
        self.paths = [os.path.join(folder, r["FileName"]) for r in rows]
        self.labels = np.array([[float(r[t]) if r[t] else np.nan for t in TASKS] for r in rows],
                               dtype=np.float32)
        self.frames, self.period, self.size = frames, period, size
        self.mean, self.std = mean, std
        self.pad, self.contrast, self.brightness = pad, contrast, brightness

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        import cv2
        import torch

        video = read_grey(self.paths[i])  # the whole file, as typical code reads it
        span = (self.frames - 1) * self.period + 1
        last = max(len(video) - span, 0)
        start = int(torch.randint(last + 1, ()))  # torch's RNG: seeded per DataLoader worker
        idx = start + self.period * np.arange(self.frames)
        s, p = self.size, self.pad
        clip = np.zeros((self.frames, s + 2 * p, s + 2 * p), dtype=np.float32)
        for t, j in enumerate(idx):
            if j < len(video):  # past the end: black frames (pad_mode "constant")
                clip[t, p:p + s, p:p + s] = cv2.resize(video[j], (s, s),
                                                       interpolation=cv2.INTER_AREA)
        y, x = (int(v) for v in torch.randint(2 * p + 1, (2,)))
        clip = (clip[:, y:y + s, x:x + s] - self.mean) / self.std
        scale = 1 + self.contrast * (2 * float(torch.rand(())) - 1)
        shift = self.brightness * (2 * float(torch.rand(())) - 1)
        clip = clip * scale + shift
        return torch.from_numpy(np.ascontiguousarray(clip[None])), torch.from_numpy(self.labels[i])


def _cpu_seconds() -> float:
    """CPU time of this process and its finished (joined) children: DALI threads, loader workers."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def ours_rate(shards: str, config, threads: int) -> tuple[float, float]:
    """(clips/s, CPU s/clip) of `ClipLoader` over the train split, second epoch."""
    from echocmr.model.contract import InputSpec
    from echocmr.read.loader import ClipLoader
    from echocmr.shards.reader import read_stats

    data = replace(config.data, num_threads=threads)
    stats = read_stats(shards)
    spec = InputSpec.build(data, stats)
    loader = ClipLoader(shards, "train", data, spec=spec, train=True, stats=stats)
    for _ in loader.epoch(0):  # warm-up epoch
        pass
    c0, t0 = _cpu_seconds(), time.perf_counter()
    n = sum(int(batch.valid.sum()) for batch in loader.epoch(1))
    seconds, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    return n / seconds, cpu / n


def plain_rate(file_list: str, shards: str, config, workers: int) -> tuple[float, float]:
    """(clips/s, CPU s/clip) of the AVI Dataset in a DataLoader over the train split, 2nd epoch."""
    import torch

    from echocmr.model.contract import InputSpec
    from echocmr.shards.reader import read_stats

    spec = InputSpec.build(config.data, read_stats(shards))
    aug = config.data.augment
    dataset = AviClips(file_list, "train", frames=spec.frames, period=spec.period,
                       size=spec.size, mean=spec.mean, std=spec.std,
                       pad=aug.pad if aug.enabled else 0,
                       contrast=aug.contrast if aug.enabled else 0.0,
                       brightness=aug.brightness if aug.enabled else 0.0)
    loader = torch.utils.data.DataLoader(dataset, batch_size=config.data.batch_size, shuffle=True,
                                         num_workers=workers, persistent_workers=False)
    for _ in loader:  # warm-up epoch
        pass
    c0, t0 = _cpu_seconds(), time.perf_counter()
    n = sum(len(clips) for clips, _ in loader)
    seconds, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    return n / seconds, cpu / n


def bytes_per_clip(shards: str, file_list: str) -> dict[str, float]:
    """Mean bytes per clip: shard set (tars + idx), webm members alone, MJPG AVIs, raw grey."""
    from echocmr.shards.reader import read_manifest

    manifest = read_manifest(shards)
    names = os.listdir(shards)
    on_disk = sum(os.path.getsize(os.path.join(shards, n)) for n in names
                  if n.endswith((".tar", ".idx")))
    folder = os.path.join(os.path.dirname(file_list), "Videos")
    avis = [os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder)]
    return {"shards": on_disk / len(manifest), "webm": float(manifest["video_bytes"].mean()),
            "avi": float(np.mean(avis)), "raw": float(N_FRAMES * SIZE * SIZE)}


def main() -> None:
    import cv2

    from echocmr.shards.reader import read_manifest
    from echocmr.train.config import load_config

    ncpu = os.cpu_count() or 1
    print(f"{ncpu} cores, load average {os.getloadavg()[0]:.1f} at start")
    config = load_config(preset="cpu-small")
    d = config.data
    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
        t0 = time.perf_counter()
        shards = make_shards(os.path.join(tmp, "shards"))
        t1 = time.perf_counter()
        file_list, mjpg_error = write_avis(shards, os.path.join(tmp, "echonet"))
        t2 = time.perf_counter()
        n_train = int((read_manifest(shards)["split"] == "train").sum())
        print(f"{N_PATIENTS * CLIPS_PER_PATIENT} clips of {N_FRAMES} frames at {SIZE}x{SIZE}, "
              f"{FPS:g} fps ({n_train} train): shard set {t1 - t0:.0f} s to write, MJPG AVIs "
              f"{t2 - t1:.0f} s (OpenCV {cv2.__version__})")

        print(f"\nloader, train split, cpu-small clips: {d.frames} frames every {d.period}, "
              f"{d.size}x{d.size}, batch {d.batch_size}, augmentation on; N = DALI threads "
              f"(data.num_threads) / DataLoader workers; load average "
              f"{os.getloadavg()[0]:.1f} before the runs")
        print("workers  ours clips/s  plain clips/s  ratio  ours CPU ms/clip  plain CPU ms/clip")
        for n in WORKERS:
            plain, plain_cpu = plain_rate(file_list, shards, config, n)
            ours, ours_cpu = ours_rate(shards, config, n)
            print(f"{n:>7}  {ours:12.1f}  {plain:13.1f}  {ours / plain:4.2f}x  "
                  f"{1e3 * ours_cpu:16.1f}  {1e3 * plain_cpu:17.1f}")

        b = bytes_per_clip(shards, file_list)
        print("\nbytes on disk per clip (mean):")
        print(f"  shard set (tars + .idx)  {b['shards'] / 1e3:8.1f} KB")
        print(f"  .webm member alone       {b['webm'] / 1e3:8.1f} KB")
        print(f"  MJPG AVI                 {b['avi'] / 1e3:8.1f} KB  "
              f"(AVI / shard set {b['avi'] / b['shards']:.1f}x; MJPG itself lossy: "
              f"{mjpg_error:.1f} grey levels mean abs error against the frames written)")
        print(f"  raw uint8 grey           {b['raw'] / 1e3:8.1f} KB  "
              f"(raw / shard set {b['raw'] / b['shards']:.1f}x)")


if __name__ == "__main__":
    main()
