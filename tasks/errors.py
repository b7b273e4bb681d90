"""Error types that the CLI turns into one clear line (exit code 1).

Every error a user can cause (bad params, bad table, missing model, bad
input file) is a ``SemioflowError`` subclass whose message says what is wrong
and, where it helps, how to fix it.  Messages never contain patient file
names or paths of raw recordings.
"""


class SemioflowError(Exception):
    """Base class of every error the CLI reports as one line."""


class ConfigError(SemioflowError):
    """params.yaml (or a CLI override) has an unknown key or a bad value."""


class SchemaError(SemioflowError):
    """A table does not match its contract in tasks/schema.py."""


class CatalogError(SemioflowError):
    """The feature catalog or prompt templates are malformed."""


class ModelNotFoundError(SemioflowError):
    """A model path/name could not be resolved locally (nothing downloads)."""
