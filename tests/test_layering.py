"""The packages' import direction, enforced on the source (docs/architecture.md, STYLE rule 14).

Every library file is parsed, and every import it makes is an arrow — module-level and
function-local imports alike, and a string constant that is exactly one of our module names
(``MODEL_CODE_MODULE = "echocmr.model.model_code"``, ``importlib.import_module("echocmr.x")``).
The rules:

* **Layers.** An arrow runs from a package to itself or down, never up and never sideways:
  ``echocmr.config`` < ``shards``, ``cluster`` < ``ingest`` < ``model`` < ``read`` <
  ``train``, ``eval`` < ``workflows`` < the command line (``echocmr.cli``, ``echocmr.demo`` and
  every package's ``cli.py``). ``train`` and ``eval`` are siblings: neither imports the other.
* **No cycles**, between files and between packages, function-local imports included.
* **Our own modules are imported at module top** in library files: a function-local
  ``from echocmr...`` hides a dependency (and, twice before, a cycle). Command-line modules may
  import anything lazily, so ``echocmr --help`` stays instant.
* **Heavy third-party libraries** are imported lazily only in command-line modules, and in the
  library functions listed in `LAZY_THIRD_PARTY` with the reason: each one keeps a library out
  of a process that does not need it (a Ray worker, a pool worker, a served model).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]

LAYERS = [
    {"echocmr.config"},
    {"echocmr.shards", "echocmr.cluster"},
    {"echocmr.ingest"},
    {"echocmr.model"},
    {"echocmr.read"},
    {"echocmr.train", "echocmr.eval", "echocmr.views"},
    {"echocmr.workflows"},
]
TOP = len(LAYERS)  # the command line

HEAVY = {"torch", "ray", "mlflow", "nvidia", "webdataset", "av", "pydicom", "rapidocr_onnxruntime",
         "onnxruntime", "sklearn", "scipy", "matplotlib", "pandas", "pyarrow", "fsspec", "s3fs",
         "cv2", "simplejpeg", "pylibjpeg", "libjpeg", "PIL", "boto3", "tqdm"}

# (package, library): why a library function of that package imports the library lazily.
LAZY_THIRD_PARTY = {
    ("echocmr.config", "ray"): "ray_connect: joining or starting Ray, for the commands that run on it",
    ("echocmr.config", "tqdm"): "a progress bar only on a terminal; logs get plain lines",
    ("echocmr.shards", "fsspec"): "remote sets only; a local set never pays for fsspec/s3fs",
    ("echocmr.shards", "s3fs"): "remote sets only",
    ("echocmr.shards", "pandas"): "the manifest as a table; verify/index paths read tars only",
    ("echocmr.shards", "pyarrow"): "the manifest writer/reader only",
    ("echocmr.shards", "ray"): "--address only: the toolkit runs locally without Ray",
    ("echocmr.shards", "nvidia"): "verify --decode only: DALI decodes every clip",
    ("echocmr.ingest", "ray"): "--address only; pool workers never import Ray",
    ("echocmr.ingest", "pydicom"): "the decoders load only in workers that read DICOMs",
    ("echocmr.ingest", "PIL"): "JPEG fallback decoder, only for files libjpeg-turbo refuses",
    ("echocmr.ingest", "pylibjpeg"): "second JPEG decoder, only when strict checks are on",
    ("echocmr.ingest", "libjpeg"): "second JPEG decoder, only when strict checks are on",
    ("echocmr.ingest", "simplejpeg"): "JPEG luma fast path, only for JPEG transfer syntaxes",
    ("echocmr.ingest", "av"): "the VP9 encoder, only in workers that write clips",
    ("echocmr.ingest", "rapidocr_onnxruntime"): "the OCR models, only when the detector is on",
    ("echocmr.ingest", "onnxruntime"): "the OCR models, only when the detector is on",
    ("echocmr.ingest", "pandas"): "label tables and the report; workers do not need it",
    ("echocmr.ingest", "pyarrow"): "the report writer, driver only",
    ("echocmr.ingest", "scipy"): "synthetic cohort generation only",
    ("echocmr.ingest", "cv2"): "optional speed-up, absent in a serving-only install",
    ("echocmr.ingest", "torch"): "never in ingest workers; synth only",
    ("echocmr.ingest", "fsspec"): "remote inputs only",
    ("echocmr.ingest", "tqdm"): "the driver's progress bar only",
    ("echocmr.model", "mlflow"): "logging and MLflow URIs only; a checkpoint loads without it",
    ("echocmr.model", "torch"): "the pyfunc's clip path; the DICOM path checks input first",
    ("echocmr.model", "pandas"): "the pyfunc's frames and predict's table",
    ("echocmr.model", "pydicom"): "predict's reader",
    ("echocmr.model", "pyarrow"): "the model card's data summary only",
    ("echocmr.read", "nvidia"): "DALI, only in the process that builds a pipeline",
    ("echocmr.read", "torch"): "the loader's tensors, only in training processes",
    ("echocmr.train", "mlflow"): "rank 0 and the driver only; other ranks never import it",
    ("echocmr.train", "ray"): "the driver and workers; `--help` and config loading never",
    ("echocmr.train", "nvidia"): "DALI, only in training workers",
    ("echocmr.train", "torch"): "training processes only",
    ("echocmr.views", "torch"): "the view classifier's training only",
    ("echocmr.views", "mlflow"): "the view classifier's run and registration only",
    ("echocmr.train", "pandas"): "the driver's site summary only",
    ("echocmr.train", "pyarrow"): "the driver's resume lookup in Ray's storage only",
    ("echocmr.eval", "mlflow"): "only when the evaluation is tracked",
    ("echocmr.eval", "ray"): "only with --workers > 1",
    ("echocmr.eval", "torch"): "inference only; --predictions evaluations never load torch",
    ("echocmr.eval", "nvidia"): "DALI, inference only",
    ("echocmr.eval", "matplotlib"): "the report's plots only",
    ("echocmr.eval", "scipy"): "the statistics that need it",
    ("echocmr.eval", "sklearn"): "the stacker and calibration only",
    ("echocmr.eval", "pandas"): "tables",
    ("echocmr.eval", "pyarrow"): "tables",
    ("echocmr.workflows", "mlflow"): "finding finished runs only",
    ("echocmr.workflows", "ray"): "only when a workflow trains",
    ("echocmr.cluster", "ray"): "the local cluster and job submission only",
    ("echocmr.cluster", "yaml"): "the shipped configs only",
}


def _package_dirs() -> dict[str, Path]:
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return {pkg: ROOT / folder for pkg, folder in conf["package-dir"].items()}


def _modules() -> dict[str, Path]:
    """``{echocmr.x.y: path}`` for every library file the wheel installs."""
    out: dict[str, Path] = {}
    for pkg, folder in _package_dirs().items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("").parts
            if rel[-1] == "__init__":
                rel = rel[:-1]
            name = ".".join((pkg, *rel))
            # a sub-folder that is its own package (echocmr.ingest.synth) is found once
            out.setdefault(name, path)
    return out


MODULES = _modules()


# The foundation every package may import: the namespace, typed configs, progress lines, the
# error type every package raises, the tracking-store check (stdlib only; the CLI runs it), and
# how a command joins Ray (Ray imported inside its functions only).
CORE = {"echocmr", "echocmr.config", "echocmr.progress", "echocmr.errors", "echocmr.tracking_store",
        "echocmr.ray_connect"}


def package_of(module: str) -> str:
    if module in CORE:
        return "echocmr.config"
    parts = module.split(".")
    if parts[1] in ("cli", "__main__", "demo"):
        return "cli"
    return ".".join(parts[:2])


def is_cli(module: str) -> bool:
    return package_of(module) == "cli" or module.split(".")[-1] == "cli"


def layer_of(module: str) -> int:
    if is_cli(module):
        return TOP
    pkg = package_of(module)
    return next(i for i, layer in enumerate(LAYERS) if pkg in layer)


def _resolve(name: str) -> str | None:
    """The longest prefix of ``name`` that is one of our modules (``from a.b import c`` names
    ``a.b.c`` when ``c`` is a module, else ``a.b``)."""
    parts = name.split(".")
    for n in range(len(parts), 1, -1):
        candidate = ".".join(parts[:n])
        if candidate in MODULES:
            return candidate
    return "echocmr" if name == "echocmr" else None


def _imports(module: str, path: Path):
    """``(target module, line, local: bool, kind)`` for every arrow out of one file; kind is
    ``own`` or the top-level name of a third-party library."""
    tree = ast.parse(path.read_text(), filename=str(path))
    local_nodes: set[int] = set()
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            local_nodes.update(id(n) for n in ast.walk(fn) if n is not fn)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1],
                                 *([base] if base else [])])
            names = [f"{base}.{a.name}" for a in node.names] if base.startswith("echocmr") \
                else [base]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and node.value.startswith("echocmr.") and node.value in MODULES:
            names = [node.value]
        for name in names:
            # a module named in a string is an arrow, but not an import to hoist
            local = id(node) in local_nodes and not isinstance(node, ast.Constant)
            if name.startswith("echocmr"):
                target = _resolve(name)
                if target and target != module:
                    yield target, node.lineno, local, "own"
            elif name.split(".")[0] in HEAVY:
                yield name.split(".")[0], node.lineno, local, name.split(".")[0]


@pytest.fixture(scope="module")
def arrows():
    out = []
    for module, path in MODULES.items():
        for target, line, local, kind in _imports(module, path):
            out.append((module, target, f"{path.relative_to(ROOT)}:{line}", local, kind))
    return out


def test_every_library_file_is_seen():
    """The walk covers every package the wheel installs (a new package needs a layer)."""
    packages = {package_of(m) for m in MODULES} - {"cli"}
    assert packages == set().union(*LAYERS)
    assert "echocmr.model.store" in MODULES and "echocmr.ingest.synth.cli" in MODULES


def test_arrows_run_down_the_layers(arrows):
    wrong = []
    for src, dst, where, _local, kind in arrows:
        if kind != "own" or package_of(src) == package_of(dst):
            continue
        if layer_of(src) == TOP and layer_of(dst) == TOP:
            continue  # the command line composes itself
        if layer_of(dst) >= layer_of(src):
            wrong.append(f"{where}: {src} -> {dst}")
    assert not wrong, "imports that run up or sideways:\n" + "\n".join(sorted(wrong))


def test_train_and_eval_never_import_each_other(arrows):
    mixed = [f"{where}: {s} -> {d}" for s, d, where, _l, k in arrows if k == "own"
             and {package_of(s), package_of(d)} == {"echocmr.train", "echocmr.eval"}]
    assert not mixed


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan, iterative)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in list(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            node, it = work[-1]
            for nxt in it:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter[0]
                    counter[0] += 1
                    stack.append(nxt)
                    on.add(nxt)
                    work.append((nxt, iter(sorted(edges.get(nxt, ())))))
                    break
                if nxt in on:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        n = stack.pop()
                        on.discard(n)
                        comp.append(n)
                        if n == node:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def test_no_cycles_between_files(arrows):
    edges: dict[str, set[str]] = defaultdict(set)
    for src, dst, _where, _local, kind in arrows:
        # a package's __init__ is not an arrow's end unless named: `from echocmr.x import y`
        # resolves to the module y, and `import echocmr` to nothing of ours
        if kind == "own" and dst != "echocmr":
            edges[src].add(dst)
    cycles = _cycles(edges)
    assert not cycles, "\n".join(" <-> ".join(c) for c in cycles)


def test_no_cycles_between_packages(arrows):
    edges: dict[str, set[str]] = defaultdict(set)
    for src, dst, _where, _local, kind in arrows:
        if kind == "own" and not is_cli(src) and package_of(src) != package_of(dst):
            edges[package_of(src)].add(package_of(dst))
    assert _cycles(edges) == []


def test_our_modules_are_imported_at_module_top(arrows):
    hidden = [f"{where}: {src} imports {dst} inside a function" for src, dst, where, local, kind
              in arrows if kind == "own" and local and not is_cli(src)]
    assert not hidden, "\n".join(sorted(hidden))


def test_heavy_libraries_load_lazily_only_where_a_reason_is_written(arrows):
    unlisted = sorted({f"{package_of(src)} imports {kind} lazily ({where})"
                       for src, _dst, where, local, kind in arrows
                       if kind != "own" and local and not is_cli(src)
                       and (package_of(src), kind) not in LAZY_THIRD_PARTY})
    assert not unlisted, "\n".join(unlisted)


def test_the_checker_sees_what_it_should(tmp_path):
    """The walk is not blind: a function-local import, a relative import and a module name in a
    string are all arrows."""
    path = tmp_path / "probe.py"
    path.write_text("from . import loader\n"
                    "def f():\n    from echocmr.train.loop import run_training\n"
                    "NAME = 'echocmr.model.model_code'\n")
    found = {(t, local) for t, _l, local, _k in _imports("echocmr.eval.probe", path)}
    assert ("echocmr.train.loop", True) in found
    assert ("echocmr.model.model_code", False) in found
    assert ("echocmr.eval", False) in found or ("echocmr.eval.loader", False) in found
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
