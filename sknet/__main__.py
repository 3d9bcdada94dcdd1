from sknet.cli import main

raise SystemExit(main())
