"""Paper studies: experiment definitions, runners and summary tables for the notebooks and the CLI."""
