"""Error types that the CLI turns into one clear line (exit code 1).

Every error a user can cause (bad params, bad table, missing model, bad
input file) is a ``SemioflowError`` subclass whose message says what is wrong
and, where it helps, how to fix it.  Messages never contain patient file
names or paths of raw recordings, and ``mask_secrets`` keeps keys out of them.
"""

import re

# What an error text (an endpoint's error body, an exception) may carry that unlocks something.
_SECRETS = re.compile(
    r"(?i)(?:\b(?:bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"  # an Authorization header echoed back
    r"|\b(?:sk|pk|rk|hf|ghp|gho|xox[a-z])[-_][A-Za-z0-9_-]{8,}"  # common API key shapes
    r"|(?<=[\"'\s?&,{(:=])(?:api[_-]?key|access[_-]?token|token|secret|password|passwd|pwd)[\"']?\s*[:=]\s*[\"']?[^\s\"',&}]+"
    r"|\b[A-Fa-f0-9]{32,}\b|\b[A-Za-z0-9+/_-]{40,}={0,2})")
SECRET_MASK = "<masked>"


def mask_secrets(text: str, *known: str) -> str:
    """``text`` with key-like strings and every ``known`` secret (8+ characters) replaced by ``<masked>``."""
    for k in known:
        if k and len(k) >= 8:
            text = text.replace(k, SECRET_MASK)
    return _SECRETS.sub(SECRET_MASK, text)


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
