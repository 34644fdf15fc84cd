"""``python -m rlsparse_lib.cli`` is the ``rlsparse`` command."""

import sys

from rlsparse_lib.cli import main

sys.exit(main())
