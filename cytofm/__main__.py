"""``python -m cytofm``: the ``cytofm`` command."""

import sys

from cytofm.cli import main

sys.exit(main())
