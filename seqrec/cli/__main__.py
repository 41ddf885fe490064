"""``python -m seqrec.cli`` = the ``seqrec`` command."""

import sys

from seqrec.cli import main

sys.exit(main())
