"""API keys: kept only as SHA-256 digests, compared in constant time, never logged or echoed.

Keys come from `--api-key` or a keys file with one key per line (`#` comments allowed); a line
`sha256:<hex>` is an already hashed key, so a deployment registry or an operator can hand the
server keys it never sees in plain text.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from slmforge.errors import InputError

HASH_PREFIX = "sha256:"


def key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def hashed_line(key: str) -> str:
    """The keys-file line for `key` that does not reveal it."""
    return HASH_PREFIX + key_digest(key).hex()


def _digests_from_file(path: Path) -> list[bytes]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InputError(f"--api-keys-file {path}: cannot read it ({exc.strerror})") from None
    digests = []
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(HASH_PREFIX):
            try:
                digest = bytes.fromhex(line.removeprefix(HASH_PREFIX))
            except ValueError:
                digest = b""
            if len(digest) != 32:
                raise InputError(f"{path}:{number}: expected sha256: and 64 hex digits")
            digests.append(digest)
        else:
            digests.append(key_digest(line))
    if not digests:
        raise InputError(f"--api-keys-file {path}: no keys in it")
    return digests


class ApiKeys:
    """The accepted keys; with none configured every request is allowed."""

    def __init__(self, digests: list[bytes]) -> None:
        self._digests = list(digests)

    @classmethod
    def from_options(cls, api_key: str | None = None, keys_file: Path | None = None) -> ApiKeys:
        digests = [key_digest(api_key)] if api_key else []
        if keys_file is not None:
            digests += _digests_from_file(keys_file)
        return cls(digests)

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def allows(self, authorization: str | None) -> bool:
        """Check an `Authorization: Bearer KEY` header against every key (no early exit)."""
        if not self.enabled:
            return True
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return False
        digest = key_digest(key.strip())
        matched = False
        for known in self._digests:
            matched |= hmac.compare_digest(digest, known)
        return matched
