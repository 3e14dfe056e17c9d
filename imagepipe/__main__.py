"""`python -m imagepipe` is the `imagepipe` command."""

import sys

from imagepipe.cli import main

sys.exit(main())
