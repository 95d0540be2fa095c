"""`python -m farm`: the same as the `farm` command (for a venv whose bin/ is not on PATH)."""

from farm.cli import main

main()
