"""A/B of two checkouts of textserve on the same machine: the embedding and classifier services.

Refactors and performance work need "no loss beyond noise", and these machines drift by up to
2x within an hour, so one baseline at the start proves nothing. This benchmark serves the same
texts from checkout A and checkout B (each `textserve serve embedding classifier` run with
`PYTHONPATH=<checkout>/services`) in alternating rounds, A B A B ..., and reports per round the
throughput of each, then the median over rounds and the median of the per-round ratios B/A.

    python -m loadtests.bench_ab --a /path/to/main --b /path/to/branch [--rounds 4] [--seconds 4]

Calls: one short text (~12 tokens) per Embed / Classify call, cache skipped, at each
concurrency of --concurrency (default 1 and 32), over 4 channels.
"""

from __future__ import annotations

import asyncio
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from loadtests.bench_classifier import classify_call
from loadtests.bench_embedding import embed_call
from loadtests.common import bench_parser, closed_loop
from loadtests.serve import ServerProcess, free_port
from loadtests.texts import make_texts

SETTINGS = {"TEXTSERVE_CACHE__BACKEND": "memory"}


@dataclass
class Cell:
    """Throughputs (calls/s) of one workload, one per round, for each checkout."""

    a: list[float] = field(default_factory=list)
    b: list[float] = field(default_factory=list)

    def ratio_median(self) -> float:
        return statistics.median(b / a for a, b in zip(self.a, self.b, strict=False) if a > 0)


def server_cpu_seconds(server: ServerProcess) -> float:
    """User + system CPU seconds of the server process and its threads so far."""
    assert server.proc is not None
    times = psutil.Process(server.proc.pid).cpu_times()
    return float(times.user + times.system)


async def one_round(checkout: Path, concurrencies: list[int], seconds: float) -> dict[str, float]:
    """Throughput (calls/s) and server CPU per call (ms) of every workload against one
    checkout's server. CPU per call is far steadier than throughput on a noisy machine."""
    texts = make_texts(512, 10)
    env = SETTINGS | {"PYTHONPATH": str(checkout / "services")}
    ports = {"embedding": free_port(), "classifier": free_port()}
    results: dict[str, float] = {}
    async with ServerProcess(["embedding", "classifier"], env, ports=ports, metrics=False) as server:
        for service, bind in (("embedding", embed_call(texts)), ("classifier", classify_call(texts))):
            for concurrency in concurrencies:
                cpu: list[float] = []

                async def mark(cpu: list[float] = cpu) -> None:
                    cpu.append(server_cpu_seconds(server))

                run = await closed_loop(
                    server.address(service),
                    bind,
                    concurrency,
                    seconds,
                    warmup_s=1.0,
                    channels=4,
                    before_measure=mark,
                    after_measure=mark,
                )
                results[f"{service} c={concurrency}"] = run.stats().throughput
                results[f"{service} c={concurrency} server CPU ms/call"] = (
                    (cpu[1] - cpu[0]) / max(1, run.count) * 1e3
                )
    return results


async def main_async(a: Path, b: Path, rounds: int, seconds: float, concurrencies: list[int]) -> None:
    cells: dict[str, Cell] = {}
    for number in range(rounds):
        for label, checkout in (("A", a), ("B", b)) if number % 2 == 0 else (("B", b), ("A", a)):
            measured = await one_round(checkout, concurrencies, seconds)
            for key, value in measured.items():
                getattr(cells.setdefault(key, Cell()), label.lower()).append(value)
            print(f"round {number + 1} {label}: " + ", ".join(f"{k} {v:.3g}" for k, v in measured.items()))
    print(f"\nA = {a}\nB = {b}\n")
    print(
        "| workload (calls/s or server CPU ms/call) | A median | B median | median per-round B/A | rounds |"
    )
    print("|---|---:|---:|---:|---:|")
    for key, cell in cells.items():
        print(
            f"| {key} | {statistics.median(cell.a):.3g} | {statistics.median(cell.b):.3g} "
            f"| {cell.ratio_median():.3f} | {len(cell.a)} |"
        )


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--a", type=Path, required=True, help="baseline checkout (its services/ is served)")
    parser.add_argument("--b", type=Path, required=True, help="candidate checkout")
    parser.add_argument("--rounds", type=int, default=4, help="rounds of A and B, order alternating")
    parser.add_argument("--seconds", type=float, default=4.0, help="measurement time per workload")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32], help="concurrent callers")
    args = parser.parse_args()
    asyncio.run(main_async(args.a.resolve(), args.b.resolve(), args.rounds, args.seconds, args.concurrency))


if __name__ == "__main__":
    main()
