"""The command line: a thin shell over the Python API (entry point: sigscope.cli.main:main)."""
