"""The researcher's command line, ``arte``: models, tasks and the offline ARTE pipeline on files."""
