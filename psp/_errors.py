"""The psp package's error hierarchy (ARCHITECTURE §3.4) and its stable error codes (RFC-NOTES §9.6).

Every refusal a vault sends carries an :class:`ErrorCode`: a stable number, a stable name, and
whether a client may retry. Codes below 200 are final (authorization, invalid query, protocol);
codes from 200 are transient (unavailable, deadline, cancelled, internal).
"""

from __future__ import annotations

import enum

__all__ = [
    "AuthorizationError",
    "ErrorCode",
    "LocalProtocolError",
    "PSPError",
    "QueryError",
    "RemoteProtocolError",
    "VaultError",
]


class ErrorCode(enum.IntEnum):
    """Stable error codes. The number and the name never change meaning once published."""

    # capability and invocation decoding (checked before any signature work)
    MALFORMED = 100
    TOO_LARGE = 101
    TOO_DEEP = 102
    UNSUPPORTED_VERSION = 103
    UNSUPPORTED_ALGORITHM = 104
    UNKNOWN_KEY = 105
    BAD_KEY = 106
    # cryptography: one detail-free code for every signature failure
    BAD_SIGNATURE = 110
    # chain structure and authority
    UNTRUSTED_ROOT = 111
    BROKEN_CHAIN = 112
    HOLDER_MISMATCH = 113
    SCOPE_WIDENED = 114
    SCOPE_INVALID = 115
    REVOKED = 116
    # time
    EXPIRED = 120
    NOT_YET_VALID = 121
    TIME_RANGE = 122
    # the invocation against this vault and this query
    WRONG_VAULT = 130
    REPLAYED = 131
    QUERY_MISMATCH = 132
    # the query
    QUERY_INVALID = 140
    NOT_PERMITTED = 141
    ROW_LIMIT = 142
    COST_LIMIT = 143
    AS_OF_AHEAD = 144
    DIVERGED = 145  # replicate: the follower's chain is not a prefix of this vault's
    # the connection
    PROTOCOL = 150
    VERSION_MISMATCH = 151
    # transient: a client may retry
    UNAVAILABLE = 200
    DEADLINE = 201
    CANCELLED = 202
    INTERNAL = 203

    @property
    def retryable(self) -> bool:
        return self.value >= 200

    @property
    def sentence(self) -> str:
        return _SENTENCES[self]


_SENTENCES: dict[ErrorCode, str] = {
    ErrorCode.MALFORMED: "the capability or invocation is not a well-formed canonical encoding",
    ErrorCode.TOO_LARGE: "the capability or invocation exceeds the 8 KB size limit",
    ErrorCode.TOO_DEEP: "the capability chain is longer than 5 links or nested too deeply",
    ErrorCode.UNSUPPORTED_VERSION: "the capability or invocation names an unsupported version",
    ErrorCode.UNSUPPORTED_ALGORITHM: "the capability or invocation names an unsupported algorithm",
    ErrorCode.UNKNOWN_KEY: "the capability, invocation or scope contains an unknown field",
    ErrorCode.BAD_KEY: "a public key is malformed or of small order",
    ErrorCode.BAD_SIGNATURE: "a signature does not verify",
    ErrorCode.UNTRUSTED_ROOT: "the capability chain is not rooted in a key this vault trusts",
    ErrorCode.BROKEN_CHAIN: "a link of the capability chain does not follow from its parent",
    ErrorCode.HOLDER_MISMATCH: "the invocation is not signed by the capability's holder",
    ErrorCode.SCOPE_WIDENED: "a delegation claims more than its parent grants",
    ErrorCode.SCOPE_INVALID: "a capability scope is out of range or names something invalid",
    ErrorCode.REVOKED: "a link of the capability chain has been revoked",
    ErrorCode.EXPIRED: "the capability or invocation has expired",
    ErrorCode.NOT_YET_VALID: "the capability or invocation is not yet valid",
    ErrorCode.TIME_RANGE: "a validity time is out of range",
    ErrorCode.WRONG_VAULT: "the invocation is not addressed to this vault",
    ErrorCode.REPLAYED: "the invocation has already been used",
    ErrorCode.QUERY_MISMATCH: "the query is not the one the invocation signed",
    ErrorCode.QUERY_INVALID: "the query is malformed",
    ErrorCode.NOT_PERMITTED: "the capability does not permit this query",
    ErrorCode.ROW_LIMIT: "the query asks for more rows than the capability allows",
    ErrorCode.COST_LIMIT: "the query is more expensive than the vault allows",
    ErrorCode.AS_OF_AHEAD: "the query is pinned to a sequence number the vault has not reached",
    ErrorCode.DIVERGED: "the replica's chain is not a prefix of this vault's chain",
    ErrorCode.PROTOCOL: "the peer violated the PSP wire protocol",
    ErrorCode.VERSION_MISMATCH: "the peers share no PSP protocol version",
    ErrorCode.UNAVAILABLE: "the vault is unavailable",
    ErrorCode.DEADLINE: "the deadline passed before the query finished",
    ErrorCode.CANCELLED: "the query was cancelled",
    ErrorCode.INTERNAL: "the vault failed internally",
}


class PSPError(Exception):
    """Base class for every error the psp package raises on purpose."""


class LocalProtocolError(PSPError):
    """The caller misused a core (wrong state, bad argument). A bug on our side."""


class RemoteProtocolError(PSPError):
    """The peer sent something the protocol does not allow.

    ``code`` says what, as the stable code the vault would send back (``PROTOCOL`` by default).
    """

    def __init__(self, message: str, code: ErrorCode = ErrorCode.PROTOCOL) -> None:
        super().__init__(message)
        self.code = code


class AuthorizationError(RemoteProtocolError):
    """An invocation or capability was refused. The message is the code's fixed sentence only."""

    def __init__(self, code: ErrorCode) -> None:
        super().__init__(f"{code.name}: {code.sentence}", code)


class QueryError(RemoteProtocolError):
    """A query is malformed, not permitted, or over a limit."""

    def __init__(self, code: ErrorCode, detail: str = "") -> None:
        super().__init__(f"{code.name}: {detail or code.sentence}", code)
        self.detail = detail or code.sentence


class VaultError(RemoteProtocolError):
    """A vault answered a request with an error frame."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}", code)
        self.detail = message
