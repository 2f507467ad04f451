"""Errors a user can act on, and scrubbing secrets from anything printed or logged.

Every layer raises `UserError` (or a subclass) for a problem the user can fix: the CLI
prints it as one line, `error: <message>`, and exits with `exit_code`; no traceback.
Messages name the file, table, column or setting at fault.
"""

from __future__ import annotations

import re

#: credentials in a URL (`scheme://user:password@host`) and bearer tokens in text
_URL_CREDENTIALS = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^/@\s:]*):(?P<pw>[^/\s]*)@"
)
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s'\"]+")
_QUERY_SECRET = re.compile(
    r"(?i)([?&](?:password|passwd|pwd|token|secret|api_key|apikey|access_key)=)[^&\s'\"]+"
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class UserError(Exception):
    """A problem with the user's data, settings or environment, stated in one line."""

    exit_code: int = 2

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(redact(message))
        if exit_code is not None:
            self.exit_code = exit_code


def redact(text: str) -> str:
    """`text` with URL passwords, bearer tokens and secret query values replaced by `***`."""
    text = _URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    text = _BEARER.sub(r"\1***", text)
    return _QUERY_SECRET.sub(r"\1***", text)


def one_line(text: str, limit: int = 500) -> str:
    """`text` on one line: control characters escaped, secrets redacted, length capped."""
    out = _CONTROL.sub(lambda m: m[0].encode("unicode_escape").decode("ascii"), redact(str(text)))
    return out if len(out) <= limit else out[: limit - 3] + "..."
