"""``python -m seqrec`` = the ``seqrec`` command (``torchrun -m seqrec fit …`` starts each rank this way)."""

import sys

from seqrec.cli import main

sys.exit(main())
