"""``python -m pocketsize.cli``: the same as the ``pocketsize`` command."""

import sys

from pocketsize.cli import main

sys.exit(main())
