"""``python -m agents.evaluation CONFIG.yaml [key=value ...]``."""

import sys

from agents.evaluation.main import main

sys.exit(main())
