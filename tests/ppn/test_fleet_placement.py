"""Advisory placement tables (RFC-NOTES §8.5)."""

from __future__ import annotations

import pytest

from ppn.fleet import SAFETY_MARGIN_MB, Candidate, Placed, PlacementRequest, Refused, place


def node(name: str, avail: int, *, kvm: bool = False, reserved: bool = False) -> Candidate:
    return Candidate(name=name, ram_available_mb=avail, kvm=kvm, reserved=reserved)


A = node("a", 4096)
B = node("b", 8192)
C_KVM = node("c", 3000, kvm=True)
R_BIG = node("r", 32768, reserved=True)


@pytest.mark.parametrize(
    "request_,live,expected",
    [
        # most available RAM wins
        (PlacementRequest(vm_type="generic", ram_mb=1024), [A, B], "b"),
        # the margin: 3584 + 512 = 4096 fits exactly on a, one more MB does not
        (PlacementRequest(vm_type="generic", ram_mb=3584), [A], "a"),
        (PlacementRequest(vm_type="generic", ram_mb=3585), [A, node("b", 4096)], None),
        # KVM first when preferred, even with less RAM; not otherwise
        (PlacementRequest(vm_type="generic", ram_mb=1024, prefer_kvm=True), [A, B, C_KVM], "c"),
        (PlacementRequest(vm_type="generic", ram_mb=1024), [A, B, C_KVM], "b"),
        # KVM preferred but the KVM node does not fit: most RAM among the rest
        (PlacementRequest(vm_type="generic", ram_mb=2600, prefer_kvm=True), [A, B, C_KVM], "b"),
        # reserved nodes last, even with the most RAM
        (PlacementRequest(vm_type="generic", ram_mb=1024), [A, R_BIG], "a"),
        # ...but used when nothing else fits
        (PlacementRequest(vm_type="generic", ram_mb=16384), [A, B, R_BIG], "r"),
        # a named node is used if live and fitting, reserved or not
        (PlacementRequest(vm_type="generic", ram_mb=1024, node="a"), [A, B], "a"),
        (PlacementRequest(vm_type="generic", ram_mb=1024, node="r"), [A, R_BIG], "r"),
        (PlacementRequest(vm_type="generic", ram_mb=8000, node="a"), [A, B], None),
        (PlacementRequest(vm_type="generic", ram_mb=10, node="gone"), [A, B], None),
        # Totebox pinning
        (PlacementRequest(vm_type="totebox", ram_mb=1024), [A, B], None),
        (PlacementRequest(vm_type="totebox", ram_mb=1024, node="a"), [A, B], "a"),
        # ties broken by name, deterministically
        (PlacementRequest(vm_type="generic", ram_mb=1), [node("z", 2000), node("m", 2000)], "m"),
        # nothing live
        (PlacementRequest(vm_type="generic", ram_mb=1), [], None),
    ],
)
def test_placement_table(
    request_: PlacementRequest, live: list[Candidate], expected: str | None
) -> None:
    decision = place(request_, live)
    if expected is None:
        assert isinstance(decision, Refused), decision
    else:
        assert isinstance(decision, Placed), decision
        assert decision.node == expected


def test_refusals_say_why() -> None:
    decision = place(PlacementRequest(vm_type="vm-totebox", ram_mb=1), [A])
    assert isinstance(decision, Refused) and "must name its node" in decision.reason
    decision = place(PlacementRequest(vm_type="generic", ram_mb=9000), [A, B])
    assert isinstance(decision, Refused)
    assert (
        f"{9000 + SAFETY_MARGIN_MB} MB" in decision.reason and "8192 MB on 'b'" in decision.reason
    )
    decision = place(PlacementRequest(vm_type="generic", ram_mb=1, node="x"), [A])
    assert isinstance(decision, Refused) and "not live" in decision.reason


def test_reserved_fallback_is_flagged() -> None:
    decision = place(PlacementRequest(vm_type="generic", ram_mb=16384), [A, R_BIG])
    assert isinstance(decision, Placed) and decision.reserved_fallback
    assert "reserved" in decision.reason
    decision = place(PlacementRequest(vm_type="generic", ram_mb=1), [A, R_BIG])
    assert isinstance(decision, Placed) and not decision.reserved_fallback


def test_totebox_type_spellings() -> None:
    from ppn.fleet import is_totebox

    assert is_totebox("totebox") and is_totebox("VM-Totebox") and is_totebox("vm-totebox")
    assert not is_totebox("orchestration") and not is_totebox("toteboxes")
