"""The ``inlet`` key of the configuration: the HTTP inlet's connections and limits (:mod:`service.inlet`)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

from core.errors import ConfigError

# Safe in a URL path segment as it is; "batch" would shadow POST /collection/batch/{connection_id}.
_CONNECTION_ID = re.compile(r"(?!batch$)[A-Za-z0-9._~-]{1,128}")
# An origin as browsers send it in the Origin header (lower case, no path, no trailing slash), which is compared
# exactly: any other spelling would never match and would fail silently.
_ORIGIN = re.compile(r"https?://(?:[a-z0-9-]+(?:\.[a-z0-9-]+)*|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?")


@dataclasses.dataclass(frozen=True, kw_only=True)
class InletConnection:
    """One connection of the HTTP inlet: its token, its rate limit, the attributes of messages naming none, and the
    web pages (``allowed_origins``) whose browsers may send to it.

    A ``public`` connection asks no token, since a page cannot keep one secret; it must name its allowed origins,
    and a connection without a token that names origins must say it is public. ``"*"`` is refused: a wildcard
    would let any site's pages write into the connection, and answering with the exact origin costs nothing.
    """

    token: str | None = None
    token_env: str | None = None
    rate_per_second: float = 100.0
    burst: int = 200
    schema: str | None = None
    dataset: str | None = None
    allowed_origins: tuple[str, ...] = ()
    public: bool = False

    def __post_init__(self) -> None:
        asks_token = self.token is not None or self.token_env is not None
        if self.token is not None and self.token_env is not None:
            raise ConfigError("takes token or token_env, not both")
        if self.rate_per_second <= 0 or self.burst <= 0:
            raise ConfigError("rate_per_second and burst must be positive")
        for origin in self.allowed_origins:
            if not isinstance(origin, str) or not _ORIGIN.fullmatch(origin):
                raise ConfigError(
                    f"allowed_origins: {origin!r} is not an origin as browsers send it "
                    '(like "https://shop.example.com" or "http://localhost:3000": lower case, no path; no "*")'
                )
        if self.public and asks_token:
            raise ConfigError("a public connection asks no token: a browser cannot keep one secret")
        if self.public and not self.allowed_origins:
            raise ConfigError("a public connection must name its allowed_origins")
        if self.allowed_origins and not asks_token and not self.public:
            raise ConfigError("allowed_origins without a token make the connection public: say public: true")

    def resolved_token(self, environ: Mapping[str, str]) -> str | None:
        """The token a request must carry (None: none asked), read from ``environ`` when ``token_env`` names it."""
        if self.token_env is None:
            return self.token
        token = environ.get(self.token_env, "").strip()
        if not token:
            raise ConfigError(f"token_env names {self.token_env}, which is not set")
        return token


@dataclasses.dataclass(frozen=True, kw_only=True)
class InletSettings:
    """The ``inlet`` key: the HTTP inlet's connections and limits."""

    max_request_bytes: int = 1024 * 1024
    publish_timeout_seconds: float = 10.0
    connections: Mapping[str, InletConnection] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_request_bytes <= 0 or self.publish_timeout_seconds <= 0:
            raise ConfigError("inlet.max_request_bytes and inlet.publish_timeout_seconds must be positive")
        for connection_id in self.connections:
            if not _CONNECTION_ID.fullmatch(connection_id):
                raise ConfigError(
                    f"inlet.connections: {connection_id!r} is not a connection id "
                    "(1 to 128 of A-Z a-z 0-9 . _ ~ -, and not 'batch')"
                )
