"""Orchestration: the only package that imports Prefect (and the CLI)."""
