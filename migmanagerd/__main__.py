from migmanagerd.cli.main import main

raise SystemExit(main())
