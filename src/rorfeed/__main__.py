"""`python -m rorfeed ...`: the same as the `rorfeed` console script."""

from rorfeed.cli import main

raise SystemExit(main())
