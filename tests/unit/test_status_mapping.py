"""Error kinds <-> gRPC status codes (transport/status.py), both ways, and their BadRequest detail."""

from __future__ import annotations

import asyncio
import contextvars
import random
import subprocess
import sys

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from textserve.core.errors import (
    BackendFailure,
    Cancelled,
    DeadlineExceeded,
    InvalidInput,
    NotFound,
    NotReady,
    Overloaded,
    PermissionDenied,
    TextserveError,
    Unauthenticated,
)
from textserve.transport.status import (
    KIND_OF,
    RETRY_PUSHBACK_KEY,
    STATUS_OF,
    abort,
    error_from_status,
    field_violation,
    from_rpc_error,
    retry_pushback,
    retry_pushback_ms,
    rich_status,
    set_retry_pushback_ms,
    status_of,
)

DOCUMENTED: dict[type[TextserveError], grpc.StatusCode] = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    Cancelled: grpc.StatusCode.CANCELLED,
    NotReady: grpc.StatusCode.UNAVAILABLE,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    BackendFailure: grpc.StatusCode.INTERNAL,
}


def _instance(kind: type[TextserveError]) -> TextserveError:
    return InvalidInput("texts[3]", "must not be empty") if kind is InvalidInput else kind("x")


def test_core_errors_import_no_grpc() -> None:
    code = "import sys, textserve.core.errors; assert 'grpc' not in sys.modules, 'grpc imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("kind", list(DOCUMENTED))
def test_every_kind_maps_to_its_documented_code_and_back(kind: type[TextserveError]) -> None:
    code = DOCUMENTED[kind]
    assert STATUS_OF[kind] == code
    assert status_of(_instance(kind)) == code
    assert KIND_OF[code] is kind


def test_every_code_but_ok_has_a_kind_and_the_rest_is_internal() -> None:
    assert set(KIND_OF) == set(grpc.StatusCode) - {grpc.StatusCode.OK}
    assert KIND_OF[grpc.StatusCode.UNKNOWN] is NotReady  # a dropped connection: the peer went away
    assert status_of(TextserveError("x")) == grpc.StatusCode.INTERNAL
    assert status_of(ValueError("boom")) == grpc.StatusCode.INTERNAL
    assert status_of(asyncio.CancelledError()) == grpc.StatusCode.CANCELLED


def _as_rpc_error(error: TextserveError) -> grpc.aio.AioRpcError:
    status = rich_status(error)
    return grpc.aio.AioRpcError(
        status.code, grpc.aio.Metadata(), grpc.aio.Metadata(*status.trailing_metadata), status.details
    )


def test_invalid_input_carries_a_bad_request_field_violation() -> None:
    status = rich_status(InvalidInput("texts[3]", "must not be empty"))
    assert (status.code, status.details) == (grpc.StatusCode.INVALID_ARGUMENT, "texts[3]: must not be empty")
    ((key, value),) = status.trailing_metadata
    assert key == "grpc-status-details-bin"
    bad_request = error_details_pb2.BadRequest()
    assert status_pb2.Status.FromString(value).details[0].Unpack(bad_request)
    violation = bad_request.field_violations[0]
    assert (violation.field, violation.description) == ("texts[3]", "must not be empty")
    assert field_violation(_as_rpc_error(InvalidInput("texts[3]", "must not be empty"))) == (
        "texts[3]",
        "must not be empty",
    )


def test_other_kinds_carry_no_detail() -> None:
    ((_, value),) = rich_status(NotFound("no model")).trailing_metadata
    assert not status_pb2.Status.FromString(value).details
    ((_, value),) = rich_status(InvalidInput("", "no field named")).trailing_metadata
    assert not status_pb2.Status.FromString(value).details
    assert field_violation(_as_rpc_error(Overloaded("queue full"))) is None


def test_forwarded_invalid_input_keeps_field_and_message_as_sent() -> None:
    sent = InvalidInput("texts[3]", "must not be empty", message="a message worded otherwise")
    forwarded = from_rpc_error(_as_rpc_error(sent), "embedding service at x:1")
    assert isinstance(forwarded, InvalidInput)
    assert (forwarded.field, forwarded.problem) == ("texts[3]", "must not be empty")
    assert forwarded.message == "a message worded otherwise"


def test_forwarded_errors_keep_their_kind_and_name_the_other_service() -> None:
    for kind in DOCUMENTED:
        if kind is InvalidInput:
            continue
        forwarded = from_rpc_error(_as_rpc_error(kind("went wrong")), "tokenizer service at x:1")
        assert type(forwarded) is kind
        assert forwarded.message == "tokenizer service at x:1: went wrong"
    assert from_rpc_error(_as_rpc_error(Overloaded("as sent"))).message == "as sent"


def test_a_peer_without_details_still_names_its_field() -> None:
    parsed = error_from_status(grpc.StatusCode.INVALID_ARGUMENT, "texts[3]: must not be empty")
    assert isinstance(parsed, InvalidInput)
    assert (parsed.field, parsed.problem) == ("texts[3]", "must not be empty")
    plain = error_from_status(grpc.StatusCode.INVALID_ARGUMENT, "bad request")
    assert isinstance(plain, InvalidInput) and (plain.field, plain.message) == ("", "bad request")
    empty = error_from_status(grpc.StatusCode.INVALID_ARGUMENT, "", upstream="embedding service at x:1")
    assert empty.message == "embedding service at x:1: invalid argument"


def test_invalid_input_message_names_its_field_only_when_there_is_one() -> None:
    named = InvalidInput("texts[3]", "must not be empty")
    assert (named.message, str(named), named.field, named.problem) == (
        "texts[3]: must not be empty",
        "texts[3]: must not be empty",
        "texts[3]",
        "must not be empty",
    )
    unnamed = InvalidInput("", "no field named")
    assert (unnamed.message, str(unnamed), unnamed.field) == ("no field named", "no field named", "")


def test_retry_pushback_jitters_around_the_given_or_the_calls_milliseconds() -> None:
    rng = random.getstate()
    random.seed(21)
    try:
        values = [int(retry_pushback(1000)[0][1]) for _ in range(300)]
        assert all(500 <= value <= 1500 for value in values)  # +-50 %
        assert min(values) < 600 and max(values) > 1400  # spread over the whole range
        assert {value for ((_, value),) in (retry_pushback(1) for _ in range(50))} >= {"1"}
        assert all(retry_pushback(1)[0][1] in ("1", "2") for _ in range(50))  # never below 1 ms
        assert retry_pushback(0) == () and retry_pushback(-5) == ()

        def in_a_call(milliseconds: int) -> tuple[tuple[str, str], ...]:
            set_retry_pushback_ms(milliseconds)
            return retry_pushback()

        ((key, value),) = contextvars.copy_context().run(in_a_call, 4000)
        assert key == RETRY_PUSHBACK_KEY == "grpc-retry-pushback-ms" and 2000 <= int(value) <= 6000
        assert contextvars.copy_context().run(in_a_call, 0) == ()
        ((_, default),) = retry_pushback()  # outside a call: the default
        assert 125 <= int(default) <= 375
    finally:
        random.setstate(rng)


class _Call:
    """What a finished call offers: its trailing metadata (grpc gives str or bytes values)."""

    def __init__(self, trailing: object) -> None:
        self._trailing = trailing

    def trailing_metadata(self) -> object:
        return self._trailing


def test_retry_pushback_ms_reads_the_trailer_of_a_failed_call() -> None:
    refused = grpc.aio.AioRpcError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(("other", "1"), (RETRY_PUSHBACK_KEY, "120")),
        "queue full",
    )
    assert retry_pushback_ms(refused) == 120
    assert retry_pushback_ms(_Call([(RETRY_PUSHBACK_KEY, b"77")])) == 77
    assert retry_pushback_ms(_Call([(RETRY_PUSHBACK_KEY, "soon")])) is None
    assert retry_pushback_ms(_Call([("other", "5")])) is None
    assert retry_pushback_ms(_Call(None)) is None
    assert retry_pushback_ms(ValueError("not a call")) is None


async def test_abort_ends_the_call_with_the_rich_status() -> None:
    class Context:
        async def abort(self, code: grpc.StatusCode, details: str, trailing: object) -> None:
            self.ended = (code, details, trailing)
            raise grpc.RpcError(details)

    context = Context()
    error = InvalidInput("texts[0]", "too long")
    with pytest.raises(grpc.RpcError):
        await abort(context, error)  # type: ignore[arg-type]
    assert context.ended == tuple(rich_status(error))


def test_anything_that_is_not_a_call_is_read_as_a_dropped_connection() -> None:
    assert field_violation(ValueError("x")) is None
    local = from_rpc_error(ConnectionResetError("connection reset"))
    assert type(local) is NotReady and local.message == "connection reset"
    named = from_rpc_error(ConnectionResetError("connection reset"), "tokenizer service at x:1")
    assert named.message == "tokenizer service at x:1: connection reset"
    assert type(error_from_status(grpc.StatusCode.OK, "odd")) is BackendFailure  # not a failure code
    unnamed = error_from_status(grpc.StatusCode.INVALID_ARGUMENT, "")
    assert isinstance(unnamed, InvalidInput) and unnamed.message == "invalid argument"


def test_a_failed_call_without_details_keeps_an_empty_message() -> None:
    silent = grpc.aio.AioRpcError(grpc.StatusCode.NOT_FOUND, grpc.aio.Metadata(), grpc.aio.Metadata(), None)
    assert type(from_rpc_error(silent)) is NotFound and from_rpc_error(silent).message == ""
    assert from_rpc_error(silent, "classifier service at x:1").message == "classifier service at x:1: "
