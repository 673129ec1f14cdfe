"""Tweet-sentiment operations platform: the library behind the DAGs, the CLI and the API."""

__version__ = "0.1.0"
