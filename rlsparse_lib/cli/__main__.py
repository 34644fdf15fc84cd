"""``python -m rlsparse_lib.cli`` is the ``rlsparse`` command."""

import sys

from . import main

sys.exit(main())
