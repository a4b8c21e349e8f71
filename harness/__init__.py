"""moe-accuracy harness: cases, backends, comparison, runner, reports and the ``moeacc`` CLI."""

__version__ = "0.1.0"
