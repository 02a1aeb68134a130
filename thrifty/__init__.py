"""thrifty: a cost-aware model router. The command-line entry point lives in ``thrifty.cli``."""

__version__ = "0.1.0"
