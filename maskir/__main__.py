"""``python -m maskir`` is the ``maskir`` command."""

import sys

from maskir.cli import main

sys.exit(main())
