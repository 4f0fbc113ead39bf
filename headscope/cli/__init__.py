"""The ``headscope`` command line (typer)."""
