"""Who may use a service: API keys and their scopes, short-lived WebSocket tickets, and per-key rate
limits. Protocol-free: core.guard reads the credentials off HTTP and WebSocket requests and asks here;
the service cores charge the audio they produce or transcribe to the key of the request.
"""

from __future__ import annotations

import base64
import contextvars
import hashlib
import hmac
import math
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass

from limits import RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from core.config_security import ApiKey, AuthSettings, Scope
from core.errors import RateLimited

MAX_TICKETS_REMEMBERED = 10_000
"""Redeemed tickets remembered (until they expire) so none is used twice; the oldest are forgotten first."""


@dataclass(frozen=True)
class Principal:
    """The holder of a key that was presented (by name: the key itself is never kept or logged)."""

    name: str
    scopes: frozenset[str]

    def allows(self, scope: Scope) -> bool:
        return "admin" in self.scopes or scope in self.scopes


current_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("current_principal", default=None)
"""The key of the request or session being served (None: auth is off, or Wyoming); set by core.guard."""


def may_see(owner: str | None, principal: Principal | None) -> bool:
    """Whether `principal` may see what the key named `owner` made (an uploaded voice, a job): its own, what
    no key made, and everything for an admin or when keys are off."""
    return principal is None or owner is None or "admin" in principal.scopes or owner == principal.name


def _digest(key: ApiKey) -> bytes:
    if key.sha256 is not None:
        return bytes.fromhex(key.sha256)
    assert key.key is not None
    return hashlib.sha256(key.key.get_secret_value().encode()).digest()


class KeyRing:
    """The configured keys, compared in constant time, and the tickets issued for them."""

    def __init__(self, auth: AuthSettings) -> None:
        self._keys = [(_digest(key), Principal(key.name, frozenset(key.scopes))) for key in auth.keys]
        # Both services read the same keys, so both derive the same signing secret: a ticket issued by one
        # opens a socket of the other (the dashboard gets it from the TTS service, uses it on /ws/stt).
        self._secret = hashlib.sha256(b"ticket:" + b"".join(sorted(digest for digest, _ in self._keys))).digest()
        self.ticket_ttl_s = auth.ticket_ttl_s
        self._redeemed: OrderedDict[str, float] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def authenticate(self, presented: str) -> Principal | None:
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        found = None
        for known, principal in self._keys:
            # Every key is compared, whichever matches: the time taken tells nothing about the keys.
            if hmac.compare_digest(known, digest):
                found = principal
        return found

    def _sign(self, payload: str) -> str:
        mac = hmac.new(self._secret, payload.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac[:24]).decode()

    def issue_ticket(self, principal: Principal) -> str:
        """A single-use credential for one WebSocket handshake, valid for auth.ticket_ttl_s."""
        payload = f"{int(time.time() + self.ticket_ttl_s)}.{secrets.token_urlsafe(12)}.{principal.name}"
        return f"{self._sign(payload)}.{payload}"

    def redeem(self, ticket: str) -> Principal | None:
        mac, _, payload = ticket.partition(".")
        expires, _, rest = payload.partition(".")
        nonce, _, name = rest.partition(".")
        if not (expires.isdigit() and nonce and name) or not hmac.compare_digest(mac, self._sign(payload)):
            return None
        now = time.time()
        while self._redeemed and (next(iter(self._redeemed.values())) < now or len(self._redeemed) >= MAX_TICKETS_REMEMBERED):
            self._redeemed.popitem(last=False)
        if int(expires) < now or nonce in self._redeemed:
            return None
        self._redeemed[nonce] = int(expires)
        return next((principal for _, principal in self._keys if principal.name == name), None)


class Quotas:
    """Each key's requests and audio seconds per minute, in moving windows (the `limits` package)."""

    def __init__(self, auth: AuthSettings) -> None:
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._requests = {key.name: RateLimitItemPerMinute(key.requests_per_minute) for key in auth.keys if key.requests_per_minute}
        # In milliseconds: the limiter counts whole units.
        self._audio = {
            key.name: RateLimitItemPerMinute(math.ceil(key.audio_seconds_per_minute * 1000))
            for key in auth.keys
            if key.audio_seconds_per_minute
        }

    def _retry_after(self, item: RateLimitItemPerMinute, name: str) -> int:
        reset = self._limiter.get_window_stats(item, name).reset_time
        return max(1, math.ceil(reset - time.time()))

    def admit(self, principal: Principal | None) -> None:
        """Count one request (or WebSocket session) of the key; RateLimited when it is past a limit."""
        if principal is None:
            return
        audio = self._audio.get(principal.name)
        if audio is not None and not self._limiter.test(audio, principal.name):
            raise RateLimited(
                f"API key {principal.name!r} used its {audio.amount / 1000:g} audio seconds of this minute; "
                "try again after Retry-After seconds",
                retry_after_s=self._retry_after(audio, principal.name),
            )
        requests = self._requests.get(principal.name)
        if requests is not None and not self._limiter.hit(requests, principal.name):
            raise RateLimited(
                f"API key {principal.name!r} made its {requests.amount} requests of this minute; "
                "try again after Retry-After seconds",
                retry_after_s=self._retry_after(requests, principal.name),
            )

    def charge_audio(self, seconds: float) -> None:
        """Count audio spoken or transcribed for the current request's key. A request admitted with some
        budget left is served to its end: what it used past the budget fills the window."""
        principal = current_principal.get()
        audio = None if principal is None else self._audio.get(principal.name)
        if audio is None or principal is None or seconds <= 0:
            return
        remaining = self._limiter.get_window_stats(audio, principal.name).remaining
        cost = min(math.ceil(seconds * 1000), remaining)
        if cost > 0:
            self._limiter.hit(audio, principal.name, cost=cost)


class Access:
    """One service's keys and quotas."""

    def __init__(self, auth: AuthSettings) -> None:
        self.keys = KeyRing(auth)
        self.quotas = Quotas(auth)
