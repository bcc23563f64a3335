from chancepay.cli import main

raise SystemExit(main())
