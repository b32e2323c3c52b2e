"""The command line: one entry point, every subcommand listed and working."""

import subprocess
import sys

from echocmr.cli import build_parser


def test_help_lists_subcommands_without_heavy_imports():
    code = (
        "import sys, echocmr.cli; echocmr.cli.build_parser();"
        "heavy = [m for m in ('torch', 'ray', 'mlflow', 'nvidia.dali', 'av') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"--help imports heavy modules: {out.stdout}"


def test_every_subcommand_has_a_handler():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert sub.choices, "no subcommands registered"
    for name, p in sub.choices.items():
        assert p.get_default("func") or any(
            getattr(a, "choices", None) for a in p._actions
        ), f"subcommand {name} has no handler"
