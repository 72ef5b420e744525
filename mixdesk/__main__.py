"""``python -m mixdesk``: the same entry point as the ``mixdesk`` command."""

import sys

from mixdesk.cli import main

if __name__ == "__main__":
    sys.exit(main())
