"""``python -m headscope`` runs the CLI."""

from headscope.cli.app import main

main()
