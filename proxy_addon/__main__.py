"""``python -m proxy_addon``: same as the ``tokenproxy`` console script."""

import sys

from .cli.main import main

sys.exit(main())
