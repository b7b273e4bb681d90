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


# ---- error numbers in words -------------------------------------------------------------------------------

# FFmpeg's own error codes (AVERROR tags, FFERRTAG in libavutil/error.h) as PyAV reports them: a positive
# number whose four bytes, least significant first, spell the tag ("INDA" = 1094995529).
_FFMPEG_TAGS = {
    "INDA": "invalid data: not a media file the decoder can read, or a damaged one",
    "EOF ": "the file ended early",
    "DEC": "no decoder for this codec", "ENC": "no encoder for this codec",
    "DEM": "no demuxer for this container format", "MUX": "no muxer for this container format",
    "BSF": "no bitstream filter", "FIL": "no such filter", "OPT": "no such option",
    "PRO": "no handler for this protocol", "STR": "no such stream",
    "PAWE": "a feature FFmpeg does not implement", "BUG!": "an internal FFmpeg bug", "BUG ": "an internal FFmpeg bug",
    "BUFS": "buffer too small", "EXIT": "FFmpeg was asked to exit", "EXT ": "an external library failed",
    "UNKN": "an unknown FFmpeg error",
}
# "[Errno 13] Permission denied", "[Errno 1094995529] Invalid data found…", FFmpeg's fallback
# "Error number -1094995529 occurred", "errno -22"
_ERRNO = re.compile(r"\[Errno (-?\d+)\]\s*|\b[Ee]rror number (-?\d+) occurred|\b[Ee]rrno (-?\d+)\b")


def errno_words(code: int) -> str:
    """An OS ``errno`` or an FFmpeg error number (positive, as PyAV gives it, or FFmpeg's negative AVERROR)
    in words, e.g. ``1094995529`` -> ``invalid data: …``, ``13`` -> ``Permission denied``."""
    import errno as _errno
    import os

    n = abs(int(code))
    if 0 < n < 4096 and n in _errno.errorcode:  # an OS error (AVERROR(e) is -e)
        return os.strerror(n)
    if n < 2 ** 32:
        tag = n.to_bytes(4, "little")
        for key in (tag.decode("latin-1"), tag[1:].decode("latin-1")):  # FFERRTAG(0xF8, 'D','E','C') etc.
            if key in _FFMPEG_TAGS:
                return _FFMPEG_TAGS[key]
    return f"error number {code}"


def error_words(error: BaseException | str) -> str:
    """An error (or its text) with every error number in words: the one helper every reason and message built
    from an OS or FFmpeg (PyAV) error goes through.

    ``[Errno N] Words: 'file'`` keeps the words the library already gave and drops the number; a bare number
    (``Error number -1094995529 occurred``, ``errno 13``) is replaced by its words (``errno_words``).
    """
    text = str(error)

    def sub(m: re.Match) -> str:
        code = int(next(g for g in m.groups() if g is not None))
        if m.group(1) is not None:  # "[Errno N] ": the library's words follow, unless nothing does
            rest = text[m.end():].strip()
            return "" if rest and not rest.startswith(":") else errno_words(code) + " "
        return errno_words(code)

    return " ".join(_ERRNO.sub(sub, text).split())


# ---- "did you mean" -----------------------------------------------------------------------------------------


def did_you_mean(word: str, choices, *, n: int = 1) -> str:
    """``"; did you mean 'X'?"`` for the closest of ``choices`` to ``word`` (difflib), or ``""``."""
    import difflib

    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=n, cutoff=0.6)
    if not close:
        return ""
    return "; did you mean " + " or ".join(repr(c) for c in close) + "?"
