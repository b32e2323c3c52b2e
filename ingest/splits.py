"""Keyed hashes: patient-level splits and the only identifiers that leave ingest.

Every identifier is replaced by an HMAC-SHA256 under a secret *split key*: without the key a hash
cannot be recomputed from a known patient ID (a plain SHA-256 of an ID can be, by trying IDs).

* ``patient_hash`` = HMAC(site, patient ID), ``study_hash`` = HMAC(site, Study Instance UID),
  ``clip_hash`` = HMAC(SOP Instance UID): 16 hex characters each, from separate domains. With
  ``splits.identity_scope: shared`` (sites of one network sharing an ID namespace) the patient
  hash and the split are HMAC(patient ID) alone, in their own domains, so one person seen at two
  sites is one patient; ``stats.json`` records the scope (``identity_scope``).
* The split is a function of HMAC(site, patient ID) alone: a patient lands in the same split in
  every run and whatever is added later, so no patient is ever in two splits.
  ``u = first 8 bytes / 2^64``; train if ``u < 0.7``, val if ``u < 0.8``, else test (default).
* ``split_key_fingerprint`` = HMAC(key, fixed text): tells whether two shard sets used the same key
  (reshard refuses to mix keys) and reveals nothing about the key.

The key comes from ``splits.split_key`` in the config, else ``ECHOCMR_SPLIT_KEY``. Without either,
ingest refuses to run (`DemoKeyRefused`) unless the input is a synthetic cohort written by
``echocmr synth`` or the user passed ``--allow-public-demo-key`` (``splits.allow_public_demo_key``):
the public `DEMO_SPLIT_KEY` makes every hash reversible by trying candidate IDs (100k IDs take
seconds).

A synthetic cohort is recognised by ``synthetic_cohort.json`` beside the label table (synth writes
it): it names the generator and lists the SHA-256 of each label table synth wrote. It counts only
when the ``--labels`` file's digest is listed there and ``--dicom`` lies inside the marker's
directory; a marker a user copies next to a real table, or a real table edited afterwards, does
not match. No hospital export contains it by accident.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
from pathlib import Path

from echocmr.errors import EchocmrError
from echocmr.ingest.config import SplitConfig
from echocmr.shards.format import SPLITS

log = logging.getLogger(__name__)

ENV_VAR = "ECHOCMR_SPLIT_KEY"
DEMO_SPLIT_KEY = "echocmr-demo-split-key-public-not-secret"
HASH_HEX = 16
_FINGERPRINT_TEXT = b"echocmr split-key fingerprint v1"


def resolve_split_key(configured: str | None = None, *, warn: bool = True) -> tuple[bytes, str]:
    """The split key and where it came from (``"config"``, ``"env"`` or ``"demo"``)."""
    if configured:
        return configured.encode(), "config"
    env = os.environ.get(ENV_VAR, "")
    if env:
        return env.encode(), "env"
    if warn:
        log.warning(
            "no split key given (splits.split_key or $%s): using the public demo key. Fine for "
            "synthetic data; for patient data set a secret key, or anyone can recompute hashes.",
            ENV_VAR,
        )
    return DEMO_SPLIT_KEY.encode(), "demo"


SYNTHETIC_MARKER = "synthetic_cohort.json"
_MARKER_GENERATOR = "echocmr synth"


class DemoKeyRefused(EchocmrError, ValueError):
    """No split key was given for data that is not a synthetic cohort."""


def demo_key_refusal() -> DemoKeyRefused:
    return DemoKeyRefused(
        f"no split key: set ${ENV_VAR} (or splits.split_key in --config) to a secret, e.g. "
        f"`export {ENV_VAR}=$(openssl rand -hex 32)`, store it safely and use the same key for "
        "every later ingest of this site: a different key gives every patient new hashes and a "
        "new split (a patient's clips from two runs would then sit in different splits, and "
        "`shards reshard` refuses to mix the sets). The public demo key is used only for a "
        "cohort written by `echocmr synth`, or with --allow-public-demo-key, which makes every "
        "patient hash reversible by anyone holding a list of patient IDs."
    )


def write_synthetic_marker(cohort_dir: str | os.PathLike, label_tables: tuple[str, ...], *,
                           seed: int, patients: int) -> None:
    """Write the marker that tells ingest this cohort is synthetic (called by `echocmr synth`)."""
    root = Path(cohort_dir)
    digests = {name: hashlib.sha256((root / name).read_bytes()).hexdigest()
               for name in label_tables}
    marker = {"generator": _MARKER_GENERATOR, "seed": seed, "patients": patients,
              "label_tables_sha256": digests}
    (root / SYNTHETIC_MARKER).write_text(json.dumps(marker, indent=1, sort_keys=True) + "\n")


def is_synthetic_cohort(dicom_dir: str | os.PathLike, labels_path: str | os.PathLike) -> bool:
    """Whether ``labels_path`` is a label table `echocmr synth` wrote, for DICOMs inside its
    cohort (see the module docstring)."""
    labels = Path(labels_path).resolve()
    marker_path = labels.parent / SYNTHETIC_MARKER
    try:
        marker = json.loads(marker_path.read_text())
        listed = marker["label_tables_sha256"][labels.name]
        generator = marker["generator"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if generator != _MARKER_GENERATOR:
        return False
    if hashlib.sha256(labels.read_bytes()).hexdigest() != listed:
        return False
    dicom = Path(dicom_dir).resolve()
    return dicom == labels.parent or labels.parent in dicom.parents


def key_fingerprint(key: bytes) -> str:
    """Identifies a key without revealing it (16 hex)."""
    return hmac.new(key, _FINGERPRINT_TEXT, hashlib.sha256).hexdigest()[:HASH_HEX]


class KeyedHasher:
    """Hashes and splits under one key for one site."""

    def __init__(self, key: bytes, *, site: str, config: SplitConfig | None = None) -> None:
        if not key:
            raise ValueError("the split key must not be empty")
        self._key = key
        self.site = site
        config = config or SplitConfig()
        self.scope = config.identity_scope
        total, bounds = 0.0, []
        for name in SPLITS:
            total += config.fractions[name]
            bounds.append((total, name))
        self._bounds = bounds

    @property
    def fingerprint(self) -> str:
        return key_fingerprint(self._key)

    def _digest(self, domain: str, *parts: str) -> bytes:
        # Length-prefixed parts: ("ab", "c") and ("a", "bc") must not collide.
        msg = domain.encode()
        for part in parts:
            data = part.encode("utf-8")
            msg += len(data).to_bytes(4, "big") + data
        return hmac.new(self._key, msg, hashlib.sha256).digest()

    def _person(self, domain: str, patient_id: str) -> bytes:
        """The digest that names a person: (site, ID), or the ID alone in a shared scope."""
        if self.scope == "shared":
            return self._digest(f"{domain}-shared", patient_id)
        return self._digest(domain, self.site, patient_id)

    def patient_hash(self, patient_id: str) -> str:
        return self._person("patient", patient_id).hex()[:HASH_HEX]

    def study_hash(self, study_uid: str) -> str:
        return self._digest("study", self.site, study_uid).hex()[:HASH_HEX]

    def clip_hash(self, sop_uid: str) -> str:
        return self._digest("clip", sop_uid).hex()[:HASH_HEX]

    def split(self, patient_id: str) -> str:
        """``train``, ``val`` or ``test`` for this patient of this site."""
        u = int.from_bytes(self._person("split", patient_id)[:8], "big") / 2.0**64
        for bound, name in self._bounds:
            if u < bound:
                return name
        return self._bounds[-1][1]
