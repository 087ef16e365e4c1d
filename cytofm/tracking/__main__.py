"""``python -m cytofm.tracking flush [results]``."""

import sys

from cytofm.tracking import main

sys.exit(main())
