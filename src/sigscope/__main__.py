"""`python3 -m sigscope` runs the command line."""

import sys

from sigscope.cli.main import main

sys.exit(main())
