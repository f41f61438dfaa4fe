"""Secrets out of everything a client or a log line sees: a URL is shown without its credentials."""

from __future__ import annotations

import re

_QUERY_OR_FRAGMENT = re.compile(r"[?#]")


def public_url(url: str) -> str:
    """`http://user:secret@host:11434/v1?key=x` -> `http://host:11434/v1`: scheme, host, port and path.

    The userinfo (`user:password@`), the query and the fragment may hold secrets and are left out. Cut
    by hand, not with urlsplit: a password may hold "/", "?", "#" or "@", where urlsplit ends the host
    early and keeps the secret, and a URL without a scheme (`admin:pw@host:11434`, which Ollama's client
    takes) has no host for urlsplit at all. Everything before the last "@" goes: a path holding one loses
    its host in the display, which is the safe side to err on."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        scheme, rest = "", url
    rest = rest.rpartition("@")[2]
    return scheme + separator + _QUERY_OR_FRAGMENT.split(rest, maxsplit=1)[0]
