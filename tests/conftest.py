"""Fixtures shared by several test modules."""

from tests.pg_server import postgres_server  # noqa: F401 (a fixture: one throwaway PostgreSQL per module)
