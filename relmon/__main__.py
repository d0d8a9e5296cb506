"""``python -m relmon``: the relmon command line."""

from relmon.cli import main

raise SystemExit(main())
