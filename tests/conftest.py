"""Shared pytest set-up: every test's side effects stay inside its tmp dir, and the fixtures
several test modules use are defined here (pytest finds them by name; never import a fixture).

Plain helpers (shard sets, DICOM cohorts, S3 uploads) stay importable from the ``_*_fixtures``
modules beside this file. Heavy libraries (torch, moto, s3fs) are imported inside the fixtures
that need them, so a test that uses none of them does not pay for them.
"""

import os

import pytest

# No environment is set here for the whole session: every test runs in the environment a user
# has (Ray with token auth, no split key, MLflow's and tqdm's defaults). A test that needs a
# setting sets it for itself (`split_key`, monkeypatch, a subprocess env) and says why.


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path, monkeypatch):
    """Run each test in its own directory so default stores (mlflow.db) never collide."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    yield
    # A test's in-process code can set these itself (`mlflow.set_tracking_uri` writes
    # MLFLOW_TRACKING_URI into os.environ), which monkeypatch does not undo; a later module's
    # fixture would hand that dead server to its subprocesses.
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "RAY_ADDRESS"):
        os.environ.pop(name, None)


TEST_SPLIT_KEY = "echocmr-test-suite-split-key"


@pytest.fixture
def split_key(monkeypatch):
    """``ECHOCMR_SPLIT_KEY`` for this test only, as a site sets it: ingest refuses the public
    demo key for DICOMs that `echocmr synth` did not write, and the test's cohort is hand-made.
    Child processes inherit it through ``os.environ``. Yields the key."""
    monkeypatch.setenv("ECHOCMR_SPLIT_KEY", TEST_SPLIT_KEY)
    yield TEST_SPLIT_KEY


@pytest.fixture(scope="module")
def module_split_key():
    """`split_key` for a module-scoped fixture that ingests a hand-made cohort once for all of a
    module's tests; restored when the module ends."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ECHOCMR_SPLIT_KEY", TEST_SPLIT_KEY)
        yield TEST_SPLIT_KEY


@pytest.fixture
def one_torch_thread():
    """One intra-op thread, as each Ray worker uses (cpus_per_worker=1). On a shared 2-core
    machine two OpenMP threads spinning against other processes make a 20 ms step take 1 s."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def s3_endpoint():
    """A real S3 server (moto's, on loopback) holding the empty bucket ``echo``; yields its URL.

    Starts from an empty store, points fsspec's ``s3`` at the server and sets test credentials in
    ``os.environ`` (so child processes inherit them; a child that imports fsspec afresh also needs
    ``FSSPEC_S3_ENDPOINT_URL``, which `_s3_fixtures.child_env` adds), and restores both.
    """
    import urllib.request

    import fsspec
    import moto.server as moto_server  # s3fs and moto[server] are declared dependencies: no skip
    import s3fs

    from _s3_fixtures import BUCKET

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    # moto keeps its buckets in process-wide state that outlives a server: start empty.
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"))
    saved = {
        k: os.environ.get(k)
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    }
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1"
    )
    old_conf = fsspec.config.conf.get("s3")
    # The same knob a user sets (or FSSPEC_S3_ENDPOINT_URL in the environment).
    fsspec.config.conf["s3"] = {"endpoint_url": endpoint}
    s3fs.S3FileSystem.clear_instance_cache()
    fsspec.filesystem("s3").mkdir(BUCKET)
    try:
        yield endpoint
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        if old_conf is None:
            fsspec.config.conf.pop("s3", None)
        else:
            fsspec.config.conf["s3"] = old_conf
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


@pytest.fixture(scope="session")
def echocmr_wheel(tmp_path_factory):
    """This checkout built as a wheel, once per test session (``pip wheel``, no deps, no build
    isolation: nothing is downloaded)."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(out), str(repo)], check=True, capture_output=True, text=True)
    (wheel,) = out.glob("echocmr-*.whl")
    return wheel


@pytest.fixture(scope="session")
def fresh_venv(echocmr_wheel, tmp_path_factory):
    """A new virtual environment with echocmr installed from the wheel and no source tree.

    Built once per session in a few seconds: ``python -m venv --without-pip``, then a ``.pth``
    line naming this venv's site-packages so torch, mlflow and the rest are importable without
    reinstalling them (a plain path line is appended to ``sys.path`` without running that
    directory's own ``.pth`` files, so the checkout's editable-install finder stays off), then
    ``pip install --no-deps --no-index`` of the wheel into it. ``bin/uvicorn`` is written the way
    pip would have written it had uvicorn been installed there (``mlflow models serve`` runs the
    ``uvicorn`` on ``PATH``). Returns the venv's ``bin/python``.
    """
    import subprocess
    import sys
    import sysconfig
    from pathlib import Path

    venv = tmp_path_factory.mktemp("fresh") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], check=True, capture_output=True, text=True)
    # every site-packages of this interpreter (a venv layered on another has two)
    bases = [sysconfig.get_paths()["purelib"],
             *(p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir())]
    Path(site.stdout.strip(), "_base_site_packages.pth").write_text(
        "".join(f"{p}\n" for p in dict.fromkeys(bases)))
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                    "--no-deps", "--no-index", str(echocmr_wheel)], check=True,
                   capture_output=True, text=True)
    uvicorn = venv / "bin" / "uvicorn"
    uvicorn.write_text(f"#!{python}\nimport sys\nfrom uvicorn.main import main\nsys.exit(main())\n")
    uvicorn.chmod(0o755)
    return python


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real ``mlflow server`` on loopback (`_mlflow_fixtures.start_mlflow_server`), one per
    module. Yields at once; call ``.wait()`` before use."""
    from _mlflow_fixtures import start_mlflow_server

    server = start_mlflow_server(tmp_path_factory.mktemp("mlflow-server"))
    try:
        yield server
    finally:
        server.proc.terminate()
        server.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def two_sites(tmp_path_factory):
    """A merged shard set of two sites (site_a: 10 patients, site_b: 8), for the site tests."""
    from echocmr.shards.reshard import ReshardConfig, reshard

    from _shards_fixtures import make_shard_set

    root = tmp_path_factory.mktemp("sites")
    parts = [make_shard_set(str(root / site), site=site, n_patients=n, clips_per_patient=3,
                            n_frames=20, size=32, samples_per_shard=4, seed=seed)
             for site, n, seed in (("site_a", 10, 0), ("site_b", 8, 1))]
    out = str(root / "merged")
    reshard(parts, out, config=ReshardConfig(samples_per_shard=5))
    return out
