"""The ``inlet`` key of the configuration: the HTTP inlet's connections and limits (:mod:`service.inlet`)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

from core.errors import ConfigError

# Safe in a URL path segment as it is; "batch" would shadow POST /collection/batch/{connection_id}.
_CONNECTION_ID = re.compile(r"(?!batch$)[A-Za-z0-9._~-]{1,128}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class InletConnection:
    """One connection of the HTTP inlet: its token, its rate limit and the attributes of messages naming none."""

    token: str | None = None
    token_env: str | None = None
    rate_per_second: float = 100.0
    burst: int = 200
    schema: str | None = None
    dataset: str | None = None

    def __post_init__(self) -> None:
        if self.token is not None and self.token_env is not None:
            raise ConfigError("takes token or token_env, not both")
        if self.rate_per_second <= 0 or self.burst <= 0:
            raise ConfigError("rate_per_second and burst must be positive")

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
