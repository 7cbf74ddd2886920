"""``python -m rc_emulator``: run the platform emulator (see :mod:`.server`)."""

import sys

from .server import main

if __name__ == "__main__":
    sys.exit(main())
