"""Prefect flows and the `unish` command line: orchestration only."""
