"""OpenAI-compatible endpoints: the default base URL, the one check every base URL gets, and
the placeholder key of keyless servers.

They live below `runtime` because profiles (stored below it) and engine specs (in it) both
validate URLs the same way.
"""

from __future__ import annotations

import re

from slmforge.errors import InputError

OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"
LOCAL_KEY = "none"  # local servers accept any key; the client insists on one


def check_base_url(url: str, label: str, example: str = OPENAI_DEFAULT_BASE_URL) -> str:
    """`url` without a trailing slash, or an InputError saying what a base URL looks like."""
    url = url.strip().rstrip("/")
    if not re.match(r"^https?://[^/\s]+", url) or any(c.isspace() for c in url):
        raise InputError(
            f"{label}: base URL {url!r} must start with http:// or https://, e.g. {example}"
        )
    return url
