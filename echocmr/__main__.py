"""``python -m echocmr ...`` is the ``echocmr`` command."""

import sys

from echocmr.cli import main

sys.exit(main())
