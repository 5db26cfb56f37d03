"""``python -m demo`` (``make demo``): see docs/demo.md."""

from demo.steps import main

raise SystemExit(main())
