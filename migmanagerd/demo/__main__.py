"""``python -m migmanagerd.demo`` (``make demo``): see docs/demo.md."""

from migmanagerd.demo.steps import main

raise SystemExit(main())
