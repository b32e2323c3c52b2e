"""The `echocmr` command line.

One entry point; each package contributes its subcommands through ``register(subparsers)`` in its
own ``cli`` module. Those modules import nothing heavy at import time, so ``echocmr --help`` is
instant and a subcommand only pays for the libraries it uses. The providers are imported
statically: a provider that fails to import is an ImportError here, never a missing subcommand.

What every command gets from here, so no command has to do it itself:

* flags are never abbreviated (``--shard`` is an error, not ``--shards``), and a usage error is
  one line on stderr with exit status 2;
* an error of our own (`echocmr.errors.EchocmrError`, a missing input file, an MLflow store that
  says no) is one line on stderr and exit status 1, no traceback (``--verbose`` adds it);
* the MLflow tracking store a command uses is checked first (`echocmr.tracking_store`);
* Ray token auth (`echocmr.cluster.auth.configure_client`): with a token available every Ray
  client in the process sends it.
"""

from __future__ import annotations

import argparse
import logging
import sys

from echocmr import __version__, demo
from echocmr.cluster import cli as cluster_cli
from echocmr.errors import EchocmrError
from echocmr.eval import cli as eval_cli
from echocmr.ingest import cli as ingest_cli
from echocmr.ingest.synth import cli as synth_cli
from echocmr.model import cli as model_cli
from echocmr.progress import quiet_library_bars
from echocmr.shards import cli as shards_cli
from echocmr.train import cli as train_cli
from echocmr.views import cli as views_cli
from echocmr.workflows import cli as workflows_cli

# Subcommand providers, in the order `--help` lists them.
_PROVIDERS = (synth_cli, ingest_cli, shards_cli, train_cli, views_cli, eval_cli, model_cli,
              workflows_cli, cluster_cli, demo)

# Commands that only read an MLflow store (a missing sqlite file is a typo, never a new store),
# and those that read one when their --model is a store URI. Every other command with a
# --tracking-uri may create the store.
_STORE_READERS = ("models",)
_MODEL_READERS = ("predict", "eval")
_STORE_URIS = ("models:/", "runs:/")


class _Parser(argparse.ArgumentParser):
    """Every parser of the tree: no abbreviated flags, and a one-line usage error."""

    def __init__(self, *args, **kwargs):
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="echocmr",
        description="Train video networks on echo clips to predict cardiac-MRI labels.",
    )
    parser.add_argument("--version", action="version", version=f"echocmr {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, tracebacks")
    # parser_class is _Parser; `dest` is ours alone (`cluster submit` has a positional `command`).
    sub = parser.add_subparsers(dest="echocmr_command", metavar="COMMAND")
    for provider in _PROVIDERS:
        provider.register(sub)
    return parser


def _store_mode(args) -> str | None:
    """Whether the command reads or writes the MLflow store it names (None: it uses none)."""
    from echocmr.tracking_store import READ, WRITE

    if not hasattr(args, "tracking_uri"):
        return None
    if args.echocmr_command in _STORE_READERS:
        return READ
    model = str(getattr(args, "model", None) or "")
    if args.echocmr_command in _MODEL_READERS and model.startswith(_STORE_URIS):
        return READ
    if args.echocmr_command == "predict" or getattr(args, "no_track", False):
        return None  # a local model, and nothing to log (`eval --no-track`)
    return WRITE


def _check_store(args) -> None:
    mode = _store_mode(args)
    if mode is None or getattr(args, "print_config", False):
        return
    from echocmr.model.tracking import resolve_tracking_uri
    from echocmr.tracking_store import check_tracking_store

    check_tracking_store(resolve_tracking_uri(args.tracking_uri), mode)


def _user_error(exc: BaseException) -> str | None:
    """The one line to print for an error the user can fix; None for a bug (keeps its traceback)."""
    if isinstance(exc, EchocmrError):
        return str(exc)
    if isinstance(exc, (FileNotFoundError, NotADirectoryError, IsADirectoryError,
                        PermissionError)) and exc.filename:
        return f"{exc.strerror}: {exc.filename}"
    mlflow_exceptions = sys.modules.get("mlflow.exceptions")
    if mlflow_exceptions is not None and isinstance(exc, mlflow_exceptions.MlflowException):
        return f"MLflow: {exc.message}"
    if isinstance(exc, ConnectionError) and "Ray" in str(exc):  # ray.init found no cluster
        import os

        hint = ("" if os.environ.get("RAY_AUTH_MODE", "").lower() == "token" else
                " (a cluster with token auth refuses a client without its token: put it in "
                "RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)")
        return f"{str(exc).strip().splitlines()[0]}{hint}"
    ray_exceptions = sys.modules.get("ray.exceptions")
    auth_error = getattr(ray_exceptions, "AuthenticationError", None)
    if auth_error is not None and isinstance(exc, auth_error):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return (f"Ray refused this client ({first}): give it the cluster's token in "
                "RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token "
                "(docs/train-on-many-nodes.md, 'Authentication')")
    return None


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    prog = f"echocmr {args.echocmr_command}"
    quiet_library_bars()
    try:
        from echocmr.cluster.auth import configure_client
        from echocmr.cluster.local import recorded_auth_mode, resolve_auto_address

        if getattr(args, "address", None) == "auto":  # the cluster `cluster local` started
            args.address = resolve_auto_address("auto")
        configure_client(recorded_auth_mode(getattr(args, "address", None)))
        _check_store(args)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        message = _user_error(exc)
        if message is None:
            raise
        if args.verbose:
            logging.getLogger("echocmr").exception("%s failed", prog)
        print(f"{prog}: error: {_one_line(message)}", file=sys.stderr)
        return getattr(exc, "exit_code", 1) if isinstance(exc, EchocmrError) else 1


if __name__ == "__main__":
    sys.exit(main())
