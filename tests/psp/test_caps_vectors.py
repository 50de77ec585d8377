"""The attack sample suite (tests/vectors/psp-attacks.json): every case gives its expected result."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from psp import ErrorCode, PSPError, Verifier, admit

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "psp-attacks.json"
DOC = json.loads(VECTORS.read_text())


def _run(case: dict[str, Any]) -> str:
    ctx = case["context"]
    verifier = Verifier(
        bytes.fromhex(ctx["vault"]),
        trusted_roots=[bytes.fromhex(r) for r in ctx["trusted_roots"]],
        revoked=[bytes.fromhex(r) for r in ctx["revoked"]],
    )
    for seen in ctx["seen_nonces"]:
        verifier.replay.add(bytes.fromhex(seen["nonce"]), seen["expires"])
    try:
        admit(
            verifier, bytes.fromhex(case["envelope"]), bytes.fromhex(case["query"]), now=ctx["now"]
        )
    except PSPError as exc:
        code = getattr(exc, "code", None)
        assert isinstance(code, ErrorCode), f"{type(exc).__name__} without a code"
        assert code.value == case["expect_code"] or case["expect"] == "ok"
        return code.name
    return "ok"


@pytest.mark.parametrize("case", DOC["cases"], ids=[c["name"] for c in DOC["cases"]])
def test_attack_vector(case: dict[str, Any]) -> None:
    assert _run(case) == case["expect"]


def test_suite_covers_every_refusal_family() -> None:
    expected = {c["expect"] for c in DOC["cases"]}
    must = {
        "ok", "BAD_SIGNATURE", "UNTRUSTED_ROOT", "BROKEN_CHAIN", "HOLDER_MISMATCH", "EXPIRED",
        "NOT_YET_VALID", "TIME_RANGE", "SCOPE_WIDENED", "SCOPE_INVALID", "NOT_PERMITTED",
        "WRONG_VAULT", "REPLAYED", "QUERY_MISMATCH", "REVOKED", "TOO_DEEP", "TOO_LARGE",
        "MALFORMED", "UNSUPPORTED_VERSION", "UNSUPPORTED_ALGORITHM", "UNKNOWN_KEY", "BAD_KEY",
        "ROW_LIMIT", "COST_LIMIT", "QUERY_INVALID",
    }  # fmt: skip
    assert must <= expected


def test_vectors_regenerate_identically() -> None:
    from tests.psp.gen_attack_vectors import render

    assert render() == VECTORS.read_text(), "run: python -m tests.psp.gen_attack_vectors"


def test_an_accepted_invocation_cannot_be_replayed_at_the_same_vault() -> None:
    case = next(c for c in DOC["cases"] if c["name"] == "ok_delegated")
    ctx = case["context"]
    verifier = Verifier(bytes.fromhex(ctx["vault"]))
    env, query = bytes.fromhex(case["envelope"]), bytes.fromhex(case["query"])
    admit(verifier, env, query, now=ctx["now"])
    with pytest.raises(PSPError) as info:
        admit(verifier, env, query, now=ctx["now"] + 1)
    assert getattr(info.value, "code", None) is ErrorCode.REPLAYED
    # After the invocation expires the nonce is forgotten, but the invocation is then expired.
    with pytest.raises(PSPError) as info:
        admit(verifier, env, query, now=ctx["now"] + 61)
    assert getattr(info.value, "code", None) is ErrorCode.EXPIRED
    assert len(verifier.replay) == 1
    verifier.replay.prune(ctx["now"] + 61)
    assert len(verifier.replay) == 0
