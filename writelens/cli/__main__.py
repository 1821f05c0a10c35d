"""``python -m writelens.cli``."""

import sys

from writelens.cli import main

sys.exit(main())
