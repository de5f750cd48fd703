"""`python -m synthface` is the `synthface` command."""

from synthface.cli import main

main()
