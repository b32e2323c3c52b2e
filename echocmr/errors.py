"""The one error type our packages raise for a problem the user can fix.

`EchocmrError` marks an error of our own: bad input, a missing or mistyped store, a cluster that
refuses us. ``echocmr.cli.main`` prints such an error as one line on stderr and exits non-zero
(``exit_code``, 1 unless the error says otherwise); with ``--verbose`` it shows the traceback too.
Anything else that escapes a command is a bug and keeps its traceback.

Package errors subclass it beside their usual base (``class ConfigError(EchocmrError,
ValueError)``), so callers that catch ``ValueError`` or ``FileNotFoundError`` keep working. This
module imports nothing, so every layer may use it.
"""

from __future__ import annotations


class EchocmrError(Exception):
    """A problem the user can fix; its message says what to do."""

    exit_code = 1
