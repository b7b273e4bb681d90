"""Identity: content hashes, the site key, pseudonymous ids, and the private files that map them back.

Ids are ``R`` + 10 hex digits of HMAC-SHA256(site key, file content hash);
patients are ``P`` + 10 hex of HMAC-SHA256(site key, "patient:" + patient id).
Neither is derived from names or metadata, both are stable across reruns and
clean rebuilds on one site, and neither is reversible without the key.  The
one map back to files is a private table (``private/id_map.parquet``, 0600
in a 0700 folder) written by ``write_private``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

import pyarrow.parquet as pq

from tasks.atomic import atomic_path, atomic_write_bytes
from tasks.layout import PRIVATE
from tasks.errors import SemioflowError
from tasks.schema import read_table, validate

ID_MAP = Path(PRIVATE) / "id_map.parquet"  # inside ingest's stage folder
ID_KEY_ENV = "SEMIOFLOW_ID_KEY_FILE"
DEFAULT_ID_KEY = Path(".semioflow") / "id_key"
ID_HEX_DIGITS = 10
PATIENT_HEX_DIGITS = 10
PATIENT_DOMAIN = b"patient:"  # keeps patient pseudonyms apart from recording ids under the same key
HASH_CHUNK = 8 << 20  # bytes read per hashing step


def load_id_key(path: str | Path | None = None) -> bytes:
    """The site's secret for pseudonymous ids; created (0600) on first use.

    Looked up at ``path``, else ``$SEMIOFLOW_ID_KEY_FILE``, else
    ``.semioflow/id_key`` in the working directory.  Keep it with the
    private id map: losing it changes the ids a clean rebuild produces.
    """
    return secret_file(Path(path or os.environ.get(ID_KEY_ENV) or DEFAULT_ID_KEY), "id key")


def secret_file(p: Path, what: str) -> bytes:
    """The random secret in file ``p`` (64 hex digits), created 0600 in a 0700 folder on first use.

    Process-safe: of several processes creating it at once, exactly one wins and all read the winner.
    """
    if p.is_file():
        key = p.read_bytes().strip()
        if len(key) < 32:
            raise SemioflowError(f"{what} file {p} is too short (need >= 32 hex characters)")
        return key
    p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Two processes may create it at once: each writes a candidate, and os.link (which fails when the
    # name exists) lets exactly one win; everyone then reads the winner, so all use the same key.
    tmp = p.with_name(f".{p.name}.{os.getpid()}-{secrets.token_hex(4)}")
    atomic_write_bytes(tmp, secrets.token_hex(32).encode(), mode=0o600)
    try:
        os.link(tmp, p)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return p.read_bytes().strip()


def recording_id(content_sha256: str, key: bytes) -> str:
    """Pseudonymous id of a recording from its content hash and the site key."""
    return "R" + hmac.new(key, content_sha256.encode(), hashlib.sha256).hexdigest()[:ID_HEX_DIGITS]


def sha256_file(path: Path) -> str:
    """Streaming SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def patient_pseudonym(patient_id: str, key: bytes) -> str:
    """``P`` + 10 hex of HMAC-SHA256(key, patient id): stable per site, not reversible without the key."""
    return "P" + hmac.new(key, PATIENT_DOMAIN + patient_id.encode(), hashlib.sha256).hexdigest()[:PATIENT_HEX_DIGITS]


def write_private(name: str, rows: list[dict], path: Path) -> None:
    """Validate ``rows`` as table ``name`` and write them to ``path`` readable by the owner only (0600), in a
    folder only the owner can enter (0700)."""
    table = validate(name, rows)
    Path(path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(Path(path).parent, 0o700)
    with atomic_path(path, mode=0o600) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def source_names(ingest_dir: Path, recording_ids: set[str] | list[str]) -> dict[str, str]:
    """Recording id -> its original file name, for ``recording_ids`` (reads the private id map).

    Annotation tables are keyed by file name; this is how they meet the
    pseudonymous ids.  Raises when two of them share a name (a label could
    not tell them apart).  Never log the names.
    """
    wanted = set(recording_ids)
    names = {r["recording_id"]: Path(r["source_path"]).name
             for r in read_table("id_map", Path(ingest_dir) / ID_MAP).to_pylist() if r["recording_id"] in wanted}
    if len(set(names.values())) < len(names):
        raise SemioflowError(f"{len(names) - len(set(names.values()))} recordings share a file name with another; "
                             "annotations are keyed by file name, so rename them apart")
    return names


def source_path(ingest_dir: Path, rid: str) -> Path:
    """Original file of recording ``rid`` (reads the private id map; never log the result)."""
    return source_of(ingest_dir, rid)[0]


def source_of(ingest_dir: Path, rid: str) -> tuple[Path, str]:
    """(original file, SHA-256 of its content at ingest) of recording ``rid``, from the private id map."""
    for row in read_table("id_map", Path(ingest_dir) / ID_MAP).to_pylist():
        if row["recording_id"] == rid:
            return Path(row["source_path"]), row["content_sha256"]
    raise SemioflowError(f"recording {rid} is not in the id map")
