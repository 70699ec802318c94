"""`textserve models list|load|unload|weights`: the model versions of a running model service.

Calls textserve.v1.ModelControl on the service's port (embedding, classifier, generation; with auth on,
the token must have the admin role): list the versions with their state (and the reason of a
FAILED one) and the routing in force; load a version folder (or, without a version, apply the
repository's version policy); unload a version (its calls finish first); set the traffic
weights and the shadow. Examples:

    textserve models list --service classifier
    textserve models load 2 --address 10.0.0.5:50052
    textserve models weights 1=90 2=10 --shadow 3 --shadow-share 0.2
    textserve models unload 1
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import grpc

from textserve.commands.client_options import add_client_options, open_client_channel
from textserve.v1 import models_pb2, models_pb2_grpc

DEFAULT_ADDRESSES = {
    "embedding": "127.0.0.1:50052",
    "classifier": "127.0.0.1:50053",
    "generation": "127.0.0.1:50054",
}


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Adds `models` with its four actions."""
    parser = subparsers.add_parser("models", help="list, load and unload model versions; set traffic weights")
    actions = parser.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="versions with their state and the routing in force")
    load = actions.add_parser("load", help="load and warm a version (none: apply the version policy)")
    load.add_argument("version", nargs="?", default="", help="version folder, e.g. 2")
    unload = actions.add_parser("unload", help="stop routing to a version, let its calls finish, free it")
    unload.add_argument("version", help="version, e.g. 1")
    weights = actions.add_parser("weights", help="set the traffic split (and the shadow) for new requests")
    weights.add_argument("weights", nargs="*", metavar="VERSION=WEIGHT", help="e.g. 1=90 2=10")
    weights.add_argument(
        "--clear", action="store_true", help="no weights: the newest READY version takes all"
    )
    weights.add_argument("--shadow", metavar="VERSION", help="shadow version ('' for none; default: keep)")
    weights.add_argument("--shadow-share", type=float, metavar="SHARE", help="0..1 (default: keep)")
    for action in (listing, load, unload, weights):
        action.add_argument("--service", choices=sorted(DEFAULT_ADDRESSES), default="embedding")
        action.add_argument("--address", default="", help="service host:port (default: the service's port)")
        action.add_argument("--timeout", type=float, default=300.0, help="deadline in seconds")
        action.add_argument("--json", action="store_true", help="print the answer as JSON")
        add_client_options(action)
    parser.set_defaults(handler=_models)


def parse_weights(items: list[str]) -> dict[str, float]:
    """["1=90", "2=10"] -> {"1": 90.0, "2": 10.0}; ValueError naming the bad item."""
    weights: dict[str, float] = {}
    for item in items:
        version, sep, weight = item.partition("=")
        try:
            if not sep or not version.strip():
                raise ValueError
            weights[version.strip()] = float(weight)
        except ValueError:
            raise ValueError(f"weight {item!r} is not VERSION=WEIGHT (e.g. 2=10)") from None
    return weights


_STATE = {value: name.removeprefix("VERSION_STATE_") for name, value in models_pb2.VersionState.items()}


def _version_row(version: models_pb2.ModelVersion) -> dict[str, Any]:
    row: dict[str, Any] = {"version": version.version, "state": _STATE[version.state]}
    if version.reason:
        row["reason"] = version.reason
    row.update(weight=version.weight, shadow=version.shadow, in_flight=version.in_flight)
    return row


def _print_listing(listing: models_pb2.ListVersionsResponse) -> None:
    print(f"{listing.service}: model {listing.model}")
    for version in listing.versions:
        row = _version_row(version)
        extra = " (shadow)" if version.shadow else ""
        reason = f"  {version.reason}" if version.reason else ""
        print(
            f"  version {row['version']:>4}  {row['state']:<11} weight {version.weight:g}"
            f"  in flight {version.in_flight}{extra}{reason}"
        )
    weights = (
        ", ".join(f"{v}={w:g}" for v, w in sorted(listing.weights.items())) or "none (newest READY takes all)"
    )
    print(f"  weights: {weights}")
    if listing.shadow_version:
        print(f"  shadow: version {listing.shadow_version} at {listing.shadow_share:.0%} of requests")


def _listing_json(listing: models_pb2.ListVersionsResponse) -> dict[str, Any]:
    return {
        "service": listing.service,
        "model": listing.model,
        "versions": [_version_row(v) for v in listing.versions],
        "weights": dict(listing.weights),
        "shadow_version": listing.shadow_version,
        "shadow_share": listing.shadow_share,
    }


async def _models(args: argparse.Namespace) -> int:
    address = args.address or DEFAULT_ADDRESSES[args.service]
    try:
        weights = parse_weights(args.weights) if args.action == "weights" else {}
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    async with open_client_channel(args, address) as channel:
        control = models_pb2_grpc.ModelControlStub(channel)
        try:
            listing = await _act(args, control, weights)
        except grpc.aio.AioRpcError as error:
            print(f"error: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps(_listing_json(listing)))
    else:
        _print_listing(listing)
    failed = [v for v in listing.versions if v.state == models_pb2.VERSION_STATE_FAILED]
    if args.action == "load" and any(not args.version or v.version == args.version for v in failed):
        return 1
    return 0


async def _act(
    args: argparse.Namespace, control: models_pb2_grpc.ModelControlStub, weights: dict[str, float]
) -> models_pb2.ListVersionsResponse:
    timeout = args.timeout
    if args.action == "load":
        await control.LoadVersion(models_pb2.LoadVersionRequest(version=args.version), timeout=timeout)
    elif args.action == "unload":
        await control.UnloadVersion(models_pb2.UnloadVersionRequest(version=args.version), timeout=timeout)
    elif args.action == "weights" and (
        weights or args.clear or args.shadow is not None or args.shadow_share is not None
    ):
        current = await control.ListVersions(models_pb2.ListVersionsRequest(), timeout=timeout)
        request = models_pb2.SetRoutingRequest(
            weights=weights if (weights or args.clear) else dict(current.weights),
            shadow_version=current.shadow_version if args.shadow is None else args.shadow,
            shadow_share=current.shadow_share if args.shadow_share is None else args.shadow_share,
        )
        return (await control.SetRouting(request, timeout=timeout)).routing
    return await control.ListVersions(models_pb2.ListVersionsRequest(), timeout=timeout)
