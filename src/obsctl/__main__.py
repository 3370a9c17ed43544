"""``python -m obsctl`` = the ``obsctl`` console script."""

import sys

from obsctl.cli import main

sys.exit(main())
