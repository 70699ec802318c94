"""Error kinds <-> gRPC status codes (transport/status.py), both ways, and their BadRequest detail."""

from __future__ import annotations

import asyncio
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
    STATUS_OF,
    error_from_status,
    field_violation,
    from_rpc_error,
    rich_status,
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
