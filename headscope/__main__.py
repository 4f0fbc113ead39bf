"""``python -m headscope`` runs the CLI."""

import sys

try:
    from headscope.cli.app import main
except KeyboardInterrupt:  # Ctrl-C while the CLI is still being imported
    print("interrupted", file=sys.stderr)
    sys.exit(130)

main()
