"""Secret redaction of text that leaves obsctl (forwarded driver log lines, failure messages).

One rule, used by the supervisor's log pump and by the drivers:

1. header text that authenticates a request (``Authorization:``,
   ``x-amz-security-token:``, ``Credential=``) is cut from the marker to the
   end of the line: s3fs's curl debug log prints signing headers there;
2. the value after a credential-looking key (``secret_access_key=V``,
   ``"password":"V"``, ``token: V``) becomes ``***`` whatever it is, so a
   driver that prints its configuration cannot leak a value obsctl was not
   told about;
3. each known secret value is replaced by ``***`` where it appears as itself,
   not where its characters happen to occur in ordinary text:

   * :data:`ANYWHERE_LENGTH` characters or more (an AWS secret key is 40, a
     session token hundreds, the rclone rc password 32): every occurrence,
     even inside a longer token, since no ordinary text contains it by chance;
   * :data:`MIN_TOKEN_LENGTH` to :data:`ANYWHERE_LENGTH` - 1 characters: only
     a whole token (not preceded or followed by a letter or digit);
   * shorter: never by value (replacing every ``a`` of a line would both
     damage the text and reveal the secret through the gaps); only rules 1
     and 2 apply.

The lengths are obsctl's choice, not a standard: 8 is the shortest value
that is not an ordinary word or number in a driver's log often enough to
matter, 20 the length of an AWS access key id (the shortest credential
obsctl itself handles).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Iterable

#: Replacement for every redacted value.
MASK = "***"
#: Secrets at least this long are replaced wherever they occur.
ANYWHERE_LENGTH = 20
#: Secrets at least this long (and shorter than ANYWHERE_LENGTH) are replaced as whole tokens.
MIN_TOKEN_LENGTH = 8

_AUTH_HEADER = re.compile(r"(?i)(authorization:|x-amz-security-token:|credential=)\s*\S.*")
_KEYED = re.compile(
    r"""(?ix)
    (   (?<![a-z0-9])               # a whole key: not "bypass="
        (?:secret[_-]?access[_-]?key|secret|password|passwd|pass|session[_-]?token|token
         |access[_-]?key[_-]?id|access[_-]?key|sse[_-]?customer[_-]?key(?:[_-]?base64)?)
        ["']?\s*[:=]\s*["']?        # = or : with optional quotes (JSON "key":"value")
    )
    (?!\*\*\*)([^\s"',;&}]+)        # the value, up to a space, quote or separator
    """)


@lru_cache(maxsize=32)
def _value_pattern(secrets: tuple[str, ...]) -> re.Pattern[str] | None:
    """One alternation of every redactable secret, longest first (so a secret
    containing another is masked whole). None when no secret qualifies."""
    parts = []
    for secret in sorted(set(secrets), key=len, reverse=True):
        if len(secret) >= ANYWHERE_LENGTH:
            parts.append(re.escape(secret))
        elif len(secret) >= MIN_TOKEN_LENGTH:
            parts.append(r"(?<![A-Za-z0-9])" + re.escape(secret) + r"(?![A-Za-z0-9])")
    return re.compile("|".join(parts)) if parts else None


def redact(line: str, secrets: Iterable[str | None] = ()) -> str:
    """``line`` with credentials replaced by :data:`MASK` (rules in the module docstring).

    Args:
        line: one line of text (a driver log line, an error message).
        secrets: the values to hide (credentials, the rc password); empty and
            None entries are ignored.

    Returns:
        The redacted line; text that is not a credential is left unchanged.
    """
    pattern = _value_pattern(tuple(s for s in secrets if s))
    if pattern is not None:
        line = pattern.sub(MASK, line)
    line = _KEYED.sub(lambda m: m.group(1) + MASK, line)
    return _AUTH_HEADER.sub(lambda m: m.group(1) + " " + MASK, line)
