"""`textserve generate "prompt"`: streams a completion from a running generation service."""

from __future__ import annotations

import argparse
import sys

from textserve.commands.client_options import add_client_options, open_client, print_error
from textserve.core.errors import TextserveError
from textserve.v1 import common_pb2, generation_pb2


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Adds `generate`."""
    parser = subparsers.add_parser("generate", help="stream a completion from a running generation service")
    parser.add_argument("prompt", help="prompt text (the user message with --chat)")
    parser.add_argument("--address", default="127.0.0.1:50054", help="generation service host:port")
    parser.add_argument("--chat", action="store_true", help="send the prompt as a chat user message")
    parser.add_argument("--system", default="", help="system message (with --chat)")
    parser.add_argument(
        "--max-new-tokens", type=int, default=0, help="tokens to generate (0: server default)"
    )
    parser.add_argument("--temperature", type=float, default=0.0, help="0 is greedy")
    parser.add_argument("--top-k", type=int, default=0, help="0 disables")
    parser.add_argument("--top-p", type=float, default=0.0, help="nucleus mass in (0, 1]; 0 leaves it unset")
    parser.add_argument("--repetition-penalty", type=float, default=0.0, help="0 leaves it unset")
    parser.add_argument("--stop", action="append", default=[], help="stop sequence (repeatable)")
    parser.add_argument("--seed", type=int, default=None, help="seed for reproducible sampling")
    parser.add_argument("--ignore-eos", action="store_true", help="keep generating past end-of-sequence")
    parser.add_argument("--no-stream", action="store_true", help="unary Generate instead of streaming")
    parser.add_argument("--timeout", type=float, default=120.0, help="deadline in seconds")
    add_client_options(parser)
    parser.set_defaults(handler=_generate)


def build_request(args: argparse.Namespace) -> generation_pb2.GenerateRequest:
    """The GenerateRequest the arguments describe."""
    params = generation_pb2.SamplingParams(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        stop=args.stop,
        ignore_eos=args.ignore_eos,
    )
    if args.seed is not None:
        params.seed = args.seed
    request = generation_pb2.GenerateRequest(params=params)
    if args.chat:
        messages = [common_pb2.ChatMessage(role="system", content=args.system)] if args.system else []
        messages.append(common_pb2.ChatMessage(role="user", content=args.prompt))
        request.chat.messages.extend(messages)
    else:
        request.prompt = args.prompt
    return request


async def _generate(args: argparse.Namespace) -> int:
    request = build_request(args)
    async with open_client(args, "generation") as client:
        try:
            if args.no_stream:
                response = await client.generate_request(request)
                sys.stdout.write(response.text)
                finish, usage, model = response.finish_reason, response.usage, response.model
            else:
                finish, usage, model = "", None, None
                async for item in client.stream_request(request):
                    sys.stdout.write(item.text)
                    sys.stdout.flush()
                    if item.finish_reason:
                        finish, usage, model = item.finish_reason, item.usage, item.model
        except TextserveError as error:
            sys.stdout.write("\n")
            print_error(error)
            return 1
    sys.stdout.write("\n")
    sys.stdout.flush()
    summary = f"[finish: {finish or 'unspecified'}"
    if usage is not None:
        summary += f", prompt tokens: {usage.input_tokens}, generated: {usage.output_tokens}"
    if model is not None:
        summary += f", model: {model.name}"
    print(summary + "]", file=sys.stderr)
    return 0
