"""`python -m segkit.cli ...` (what torchrun runs)."""

from segkit.cli import main

main()
