"""``ganno-evaluate CONFIG.yaml [key=value ...]``."""

import sys

from ganno_lightning.agents.evaluation.main import main

sys.exit(main())
