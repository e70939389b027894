from visfeat.cli import main

raise SystemExit(main())
