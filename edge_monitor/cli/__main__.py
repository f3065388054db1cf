"""`python -m edge_monitor.cli`: the `edge-monitor` command without its console script."""

import sys

from edge_monitor.cli import main

sys.exit(main())
