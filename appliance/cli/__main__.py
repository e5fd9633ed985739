"""`python -m appliance.cli`: what the `vaq-peer` console script runs (the lab starts peers
this way, so they need no installed script)."""

import sys

from .main import main

sys.exit(main())
