"""The frozen bundle's entry point: the same ``mixdesk`` command (window, terminal, engine, server)."""

import sys

from mixdesk.cli import main

if __name__ == "__main__":
    sys.exit(main())
