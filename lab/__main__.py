"""`python -m lab up|down|status`: see lab.hosts."""

import sys

from lab.hosts import main

sys.exit(main())
