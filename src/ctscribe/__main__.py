"""`python -m ctscribe` runs the same command as the `ctscribe` console script."""

from ctscribe.cli import main

main()
