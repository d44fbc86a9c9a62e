"""``python -m bit_transformer`` is the ``bit-transformer`` command."""

from .cli import main

raise SystemExit(main())
