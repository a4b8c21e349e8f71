"""``python -m harness.cli`` is ``moeacc``."""

from harness.cli import main

main()
