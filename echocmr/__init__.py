"""echocmr: train video networks on echo clips to predict cardiac-MRI labels, at platform scale.

Everything installs under this one namespace. The subpackages live in the repository's top-level
folders and are mapped here by setuptools (``package-dir`` in ``pyproject.toml``):

- ``echocmr.ingest``  (``ingest/``): DICOM reading, label tables, pairing, splits, the ingest job,
  the synthetic cohort (``echocmr.ingest.synth``).
- ``echocmr.shards``  (``shards/``): the shard format, writer, reader, index, verify, stats, reshard.
- ``echocmr.train``   (``train/``): the model contract, the DALI read graph, the Ray Train loop, MLflow.
- ``echocmr.eval``    (``eval/``): inference, aggregation, metrics with CIs, reports, predict, models.
- ``echocmr.cluster`` (``cluster/``): Ray cluster definitions, job submission, local multi-node.
- ``echocmr.cli`` and ``echocmr.demo`` (this folder): the command line and the whole-flow demo.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("echocmr")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0.0.0+unknown"
