"""`python -m farm.server`: the job server alone, with gearmand's common flags."""

import sys

from farm.server.app import main

sys.exit(main(prog="python -m farm.server"))
