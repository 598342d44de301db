"""``python -m ganno_lightning.boil``: the ``ganno-boil`` command (:mod:`ganno_lightning.boil.main`)."""

import sys

from ganno_lightning.boil.main import main

if __name__ == "__main__":
    sys.exit(main())
