"""The shared framing base (ppn._framing) and field reader (ppn._fields), on a toy protocol: the
one violation rule, the stop states, the outbox and the event queue; and every reader's check."""

from __future__ import annotations

import enum
import re

import pytest

from ppn import wire
from ppn._fields import Fields, unpack_typed
from ppn._framing import ConnectionClosed, FramedConnection


class Remote(Exception):
    pass


class Local(Exception):
    pass


class St(enum.Enum):
    IDLE = "idle"
    BUSY = "busy"
    DONE = "done"
    ERROR = "error"


# A toy protocol: each frame's payload is a message name; "go" moves IDLE -> BUSY, "end" BUSY ->
# DONE (a stop state). The application may send "work" only when BUSY.
_RECV = {(St.IDLE, "go"): St.BUSY, (St.BUSY, "end"): St.DONE}
_SEND = {(St.BUSY, "work"): St.BUSY}


class Toy(FramedConnection[St, object]):
    REMOTE_ERROR = Remote
    LOCAL_ERROR = Local
    FRAME_ERROR_PREFIX = "bad frame: "

    def __init__(self) -> None:
        super().__init__(St.IDLE, error=St.ERROR, max_frame=16, stop=(St.DONE,))
        self.told: list[str] = []
        self.eofs = 0

    def receive_data(self, data: bytes) -> None:
        self._receive_frames(data)

    def send(self, what: str) -> None:
        self._transition(_SEND, what, remote=False)
        self._write(what.encode())

    def _on_frame(self, payload: bytes) -> None:
        name = payload.decode()
        self._transition(_RECV, name, remote=True)
        self._events.append(name)

    def _on_eof(self) -> None:
        self.eofs += 1
        self._events.append(ConnectionClosed())

    def _tell_peer(self, error: Exception) -> None:
        self.told.append(str(error))
        self._write(b"bye")


def frame(text: str) -> bytes:
    return wire.encode_frame(text.encode(), max_size=1024)


def test_frames_split_across_reads_become_events_in_order() -> None:
    toy = Toy()
    data = frame("go") + frame("end")
    toy.receive_data(data[:3])
    assert not toy.has_events() and toy.state is St.IDLE
    toy.receive_data(data[3:])
    assert toy.has_events()
    assert [toy.next_event(), toy.next_event(), toy.next_event()] == ["go", "end", None]
    assert not toy.has_events() and toy.state.value == "done"


def test_a_stop_state_reads_no_further_frame_and_ignores_input() -> None:
    toy = Toy()
    toy.receive_data(frame("go") + frame("end") + frame("go"))
    assert [toy.next_event(), toy.next_event(), toy.next_event()] == ["go", "end", None]
    toy.receive_data(frame("junk") + b"")
    assert toy.state is St.DONE and toy.eofs == 0


def test_eof_at_a_frame_boundary_calls_on_eof_once() -> None:
    toy = Toy()
    toy.receive_data(frame("go"))
    toy.receive_data(b"")
    assert toy.eofs == 1
    assert toy.next_event() == "go"
    assert toy.next_event() == ConnectionClosed()


def test_a_peer_violation_tells_the_peer_once_enters_error_and_keeps_raising() -> None:
    toy = Toy()
    with pytest.raises(Remote, match="peer sent end in state idle"):
        toy.receive_data(frame("end"))
    assert toy.state is St.ERROR
    assert toy.told == ["peer sent end in state idle"]
    assert toy.data_to_send() == frame("bye")
    with pytest.raises(Remote, match="already failed"):
        toy.receive_data(frame("go"))
    assert toy.told == ["peer sent end in state idle"] and not toy.has_data_to_send


def test_a_bad_frame_is_a_remote_violation_with_the_protocol_prefix() -> None:
    toy = Toy()
    with pytest.raises(Remote, match=r"^bad frame: .*limit is 16"):
        toy.receive_data(b"\x00\x00\x01\x00")
    assert toy.state is St.ERROR and len(toy.told) == 1


def test_eof_mid_frame_is_a_remote_violation() -> None:
    toy = Toy()
    with pytest.raises(Remote, match="middle of a frame"):
        toy.receive_data(frame("go")[:-1] + b"")
        toy.receive_data(b"")
    assert toy.state is St.ERROR and toy.eofs == 0


def test_an_application_misuse_enters_error_without_telling_the_peer() -> None:
    toy = Toy()
    with pytest.raises(Local, match="cannot send work in state idle"):
        toy.send("work")
    assert toy.state is St.ERROR and toy.told == [] and toy.data_to_send() == b""


def test_refuse_is_a_violation_from_the_peer_and_a_plain_refusal_locally() -> None:
    toy = Toy()
    toy.receive_data(frame("go"))
    with pytest.raises(Local, match="not now, says the app"):
        toy._refuse("not now", remote=False, local="not now, says the app")
    assert toy.state is St.BUSY
    with pytest.raises(Local, match=r"^not now$"):
        toy._refuse("not now", remote=False)
    with pytest.raises(Remote, match="not now"):
        toy._refuse("not now", remote=True)
    assert toy.told == ["not now"]
    assert toy.state.value == "error"  # (mypy narrowed state to BUSY above)


def test_the_outbox_frames_and_drains() -> None:
    toy = Toy()
    toy.receive_data(frame("go"))
    toy.send("work")
    toy.send("work")
    assert toy.has_data_to_send
    assert toy.data_to_send() == frame("work") * 2
    assert toy.data_to_send() == b"" and not toy.has_data_to_send


def test_every_protocol_shares_one_connection_closed() -> None:
    import psp
    from ppn.mesh import ConnectionClosed as MeshClosed
    from psp.aggregation._connection import ConnectionClosed as AggregationClosed

    assert psp.ConnectionClosed is AggregationClosed is MeshClosed is ConnectionClosed


def test_psp_client_reports_pending_events() -> None:
    from psp import ClientConnection, ServerConnection

    client, server = ClientConnection(), ServerConnection(vault_id=b"v" * 32)
    server.receive_data(client.data_to_send())
    assert not client.has_events()
    client.receive_data(server.data_to_send())
    assert client.has_events()
    assert client.next_event() is not None and not client.has_events()


# --- the field reader ----------------------------------------------------------------------------

KEYS = frozenset({"t", "n"})


def fields(value: object, *, what: str = "", optional: frozenset[str] = frozenset()) -> Fields:
    return Fields(value, error=Remote, required=KEYS, optional=optional, what=what)


def test_the_key_set_must_be_exact() -> None:
    assert fields({"t": "x", "n": 1})["n"] == 1
    with pytest.raises(Remote, match="lacks n"):
        fields({"t": "x"})
    with pytest.raises(Remote, match="unknown fields z"):
        fields({"t": "x", "n": 1, "z": 0})
    with pytest.raises(Remote, match="must be a map"):
        fields([("t", "x")])


def test_optional_keys_may_be_present_or_absent() -> None:
    opt = frozenset({"o"})
    assert "o" not in fields({"t": "x", "n": 1}, optional=opt)
    assert "o" in fields({"t": "x", "n": 1, "o": 2}, optional=opt)
    with pytest.raises(Remote, match="lacks n"):
        fields({"t": "x", "o": 2}, optional=opt)


def test_errors_name_the_field_with_or_without_the_message() -> None:
    with pytest.raises(Remote, match=re.escape("hb.n must be an integer in [0, 5]")):
        fields({"t": "x", "n": 6}, what="hb").integer("n", 0, 5)
    with pytest.raises(Remote, match=re.escape("'n' must be an integer in [0, 5]")):
        fields({"t": "x", "n": 6}).integer("n", 0, 5)


@pytest.mark.parametrize("bad", [True, -1, 11, "3", None, 3.0])
def test_integer_refuses_other_types_bool_and_out_of_range(bad: object) -> None:
    with pytest.raises(Remote):
        fields({"t": "x", "n": bad}).integer("n", 0, 10)
    assert fields({"t": "x", "n": 10}).integer("n", 0, 10) == 10


def test_blob_checks_type_exact_size_and_bounds() -> None:
    f = fields({"t": "x", "n": b"abcd"})
    assert f.blob("n", size=4) == b"abcd"
    assert f.blob("n", low=1, high=4) == b"abcd"
    assert f.blob("n") == b"abcd"
    for kwargs in ({"size": 3}, {"low": 5}, {"high": 3}):
        with pytest.raises(Remote, match="'n' must be"):
            f.blob("n", **kwargs)
    with pytest.raises(Remote, match="must be bytes"):
        fields({"t": "x", "n": "abcd"}).blob("n")


def test_text_checks_length_and_pattern() -> None:
    f = fields({"t": "x", "n": "node-1"})
    assert f.text("n", high=6, pattern=re.compile(r"[a-z0-9-]+\Z")) == "node-1"
    with pytest.raises(Remote, match=re.escape("0..5 characters")):
        f.text("n", high=5)
    with pytest.raises(Remote, match=re.escape("7..9 characters")):
        f.text("n", low=7, high=9)
    with pytest.raises(Remote, match="not well-formed"):
        f.text("n", high=9, pattern=re.compile(r"[a-z]+\Z"))
    with pytest.raises(Remote):
        fields({"t": "x", "n": b"node"}).text("n", high=9)


def test_boolean_and_items() -> None:
    assert fields({"t": "x", "n": False}).boolean("n") is False
    with pytest.raises(Remote, match="true or false"):
        fields({"t": "x", "n": 0}).boolean("n")
    assert fields({"t": "x", "n": [1, 2]}).items("n", high=2) == [1, 2]
    with pytest.raises(Remote, match=re.escape("list of 0..1 items")):
        fields({"t": "x", "n": [1, 2]}).items("n", high=1)
    with pytest.raises(Remote, match=re.escape("list of 3..4 items")):
        fields({"t": "x", "n": [1, 2]}).items("n", low=3, high=4)
    with pytest.raises(Remote):
        fields({"t": "x", "n": (1, 2)}).items("n", high=4)


def test_integers_reads_a_fixed_length_list() -> None:
    assert fields({"t": "x", "n": [0, 7]}).integers("n", count=2) == [0, 7]
    for bad in ([1], [1, 2, 3], [1, -1], [1, True], (1, 2), [1, 2**63]):
        with pytest.raises(Remote, match="must be 2 integers"):
            fields({"t": "x", "n": bad}).integers("n", count=2)


def test_unpack_typed_wants_canonical_msgpack_with_a_text_type() -> None:
    assert unpack_typed(wire.pack_canonical({"t": "hi", "n": 1}), error=Remote, max_depth=2) == (
        "hi",
        {"t": "hi", "n": 1},
    )
    for payload in (
        b"\xc1",  # never used in msgpack
        b"\x82\xa1t\xa1x\xa1n\x01",  # keys out of canonical order
        wire.pack_canonical({"n": 1}),
        wire.pack_canonical({"t": 1}),
        wire.pack_canonical(["t", "x"]),
        wire.pack_canonical({"t": "x", "n": [[[1]]]}),  # deeper than allowed
    ):
        with pytest.raises(Remote):
            unpack_typed(payload, error=Remote, max_depth=2)
    with pytest.raises(Remote, match="limit"):
        unpack_typed(wire.pack_canonical({"t": "x" * 40}), error=Remote, max_depth=2, max_size=32)
