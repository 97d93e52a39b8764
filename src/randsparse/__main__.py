"""`python -m randsparse` runs the command-line interface."""

import sys

from randsparse.cli import main

sys.exit(main())
