"""Allow ``python -m retryopt``."""

from retryopt.cli import main

main()
