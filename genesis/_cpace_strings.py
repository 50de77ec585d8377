"""CPace string helpers (draft-irtf-cfrg-cpace-21, section 6.3 and appendix A).

These are the only encodings CPace hashes: every variable-length input is length-prefixed
(LEB128) so that no two different input tuples produce the same hash input (section 10.2).
"""

from __future__ import annotations

__all__ = [
    "generator_string",
    "lexiographically_larger",
    "lv_cat",
    "o_cat",
    "prepend_len",
    "transcript_ir",
    "transcript_oc",
]


def prepend_len(data: bytes) -> bytes:
    """``data`` preceded by the LEB128 encoding of its length (appendix A.1.1)."""
    length = len(data)
    if length < 0x80:
        # The common case (every CPace field we build is short): one length byte.
        return bytes((length,)) + data
    encoded = bytearray()
    while True:
        if length < 0x80:
            encoded.append(length)
            return bytes(encoded) + data
        encoded.append((length & 0x7F) | 0x80)
        length >>= 7


def lv_cat(*args: bytes) -> bytes:
    """The length-value concatenation ``prepend_len(a0) || prepend_len(a1) || ...`` (A.1.3)."""
    return b"".join([prepend_len(arg) for arg in args])


def lexiographically_larger(bytes1: bytes, bytes2: bytes) -> bool:
    """True if ``bytes1 > bytes2`` in the draft's lexicographic order (A.3.1).

    The draft's order is Python's own ``bytes`` order: the first differing octet decides,
    and a proper prefix is the smaller string. (The spelling follows the draft.)
    """
    return bytes1 > bytes2


def o_cat(bytes1: bytes, bytes2: bytes) -> bytes:
    """Ordered concatenation: ``b"oc"`` then the larger string, then the other (A.3.2)."""
    if bytes1 > bytes2:
        return b"oc" + bytes1 + bytes2
    return b"oc" + bytes2 + bytes1


def transcript_ir(ya: bytes, ada: bytes, yb: bytes, adb: bytes) -> bytes:
    """Initiator-responder transcript ``lv_cat(Ya, ADa) || lv_cat(Yb, ADb)`` (A.3.4)."""
    return prepend_len(ya) + prepend_len(ada) + prepend_len(yb) + prepend_len(adb)


def transcript_oc(ya: bytes, ada: bytes, yb: bytes, adb: bytes) -> bytes:
    """Symmetric-mode transcript ``o_cat(lv_cat(Ya, ADa), lv_cat(Yb, ADb))`` (A.3.6)."""
    return o_cat(prepend_len(ya) + prepend_len(ada), prepend_len(yb) + prepend_len(adb))


def generator_string(dsi: bytes, prs: bytes, ci: bytes, sid: bytes, s_in_bytes: int) -> bytes:
    """``lv_cat(DSI, PRS, zero_bytes(len_zpad), CI, sid)`` (section 8.1, appendix A.2).

    The zero padding makes DSI and PRS fill the hash's whole first input block, so for short
    passwords the amount hashed does not depend on the password's length.
    """
    dsi_lv = prepend_len(dsi)
    prs_lv = prepend_len(prs)
    len_zpad = max(0, s_in_bytes - 1 - len(prs_lv) - len(dsi_lv))
    return b"".join(
        (dsi_lv, prs_lv, prepend_len(bytes(len_zpad)), prepend_len(ci), prepend_len(sid))
    )
