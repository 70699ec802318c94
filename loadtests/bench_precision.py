"""fp32 vs INT8 for the embedding model: raw best batch, then the embedding service at concurrency
1, 32 and 64 on short (~12 tokens) and medium (~50 tokens) texts; one table, same run.

    python -m loadtests.bench_precision [--seconds 5] [--rounds 2] [--json out.json]

The INT8 artifact is built first (`textserve quantize embedding`'s code, evaluation texts from
../shared/data when present) into the default ONNX cache, unless a manifest for it is there
already (--rebuild forces it). Raw: both models in this process, batch sizes interleaved, best
of 3 passes. Service: `textserve serve embedding` with model.precision fp32, then int8, order
alternating per round (machines drift), one text per Embed call, cache off; medians over rounds.
At saturation two more ways of calling are measured on the same servers: 64 single-text
callers through the client package (its micro-batching merges them) and bulk calls of 32 texts
(4 callers): both leave less per-call work beside the model, so they show how much of the raw
INT8 speed-up a caller can keep.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from loadtests.bench_embedding import BULK_CONCURRENCY, BULK_TEXTS, bulk_call, drive
from loadtests.common import bench_parser, closed_loop, closed_loop_calls
from loadtests.serve import ServerProcess
from loadtests.texts import make_texts

LENGTHS = {"short": 10, "medium": 40}  # words -> ~12 and ~50 tokens
CONCURRENCY = (1, 32, 64)
CLIENT_CONCURRENCY = 64
SATURATION_SETUPS = (f"client package, {CLIENT_CONCURRENCY} callers", f"bulk {BULK_TEXTS} texts/call")
RAW_BATCHES = (1, 8, 32, 64)
PRECISIONS = ("fp32", "int8")
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def eval_texts() -> list[str]:
    """SST-2 dev sentences when ../shared/data is there, else synthetic texts."""
    path = SHARED / "sentiment" / "stsa.binary.dev"
    if path.is_file():
        return [line.partition(" ")[2].strip() for line in path.read_text().splitlines()][:500]
    return make_texts(300, 12)


def ensure_artifact(rebuild: bool) -> dict[str, Any]:
    """The INT8 manifest of the default model (built now unless present)."""
    from textserve.commands.quantize import build_artifact
    from textserve.core.config import ModelConfig
    from textserve.runtime import precision as prec
    from textserve.runtime.encoder import artifact_folder, detect_pooling
    from textserve.runtime.model_files import resolve_model

    config = ModelConfig(precision="int8")
    files = resolve_model(config.path, config.name, config.revision)
    folder = artifact_folder(
        config, files, "embedding", detect_pooling(files, config.pooling), "int8", "onnxruntime"
    )
    if not rebuild and (folder / prec.MANIFEST).is_file():
        print(f"reusing {folder}", file=sys.stderr)
        return prec.Manifest.load(folder / prec.MANIFEST).to_json()
    texts = eval_texts()
    _, manifest = build_artifact(config, "embedding", eval_texts=texts, eval_source="bench", progress=True)
    return manifest.to_json()


def measure_raw(seconds: float) -> dict[str, dict[str, dict[int, float]]]:
    """texts/s per length, precision and batch size (best of 3 interleaved passes)."""
    from textserve.core.config import ModelConfig
    from textserve.runtime.encoder import EncoderModel
    from textserve.runtime.precision import time_batches

    models = {p: EncoderModel(ModelConfig(precision=p)) for p in PRECISIONS}
    result: dict[str, dict[str, dict[int, float]]] = {}
    for length, words in LENGTHS.items():
        texts = make_texts(max(RAW_BATCHES), words)
        ids = [e.ids for e in models["fp32"].tokenizer.encode_many(texts)]
        batches = [ids[:size] for size in RAW_BATCHES]
        timed = time_batches({p: m.run_batch for p, m in models.items()}, batches, seconds, rounds=3)
        result[length] = {
            p: {size: row[p] for size, row in zip(RAW_BATCHES, timed, strict=True)} for p in PRECISIONS
        }
    return result


async def saturation(address: str, texts: list[str], seconds: float) -> dict[str, float]:
    """texts/s of the client package at 64 single-text callers and of bulk calls."""
    from textserve.client import AsyncTextserveClient

    warmup = min(1.0, seconds / 3)
    client = AsyncTextserveClient(embedding=address)
    try:
        merged = await closed_loop_calls(
            lambda i: client.embed(texts[i % len(texts)], skip_cache=True),
            CLIENT_CONCURRENCY,
            seconds,
            warmup_s=warmup,
        )
    finally:
        await client.close()
    bulk = await closed_loop(
        address, bulk_call(texts, BULK_TEXTS), BULK_CONCURRENCY, seconds, warmup_s=warmup, channels=4
    )
    return {
        SATURATION_SETUPS[0]: merged.throughput,
        SATURATION_SETUPS[1]: bulk.throughput * BULK_TEXTS,
    }


async def measure_service(
    seconds: float, rounds: int
) -> tuple[dict[tuple[str, int, str], list[float]], dict[tuple[str, str, str], list[float]]]:
    """texts/s per (length, concurrency, precision) and per (length, saturation setup,
    precision), one value per round."""
    texts = {name: make_texts(512, words) for name, words in LENGTHS.items()}
    cells: dict[tuple[str, int, str], list[float]] = {}
    saturated: dict[tuple[str, str, str], list[float]] = {}
    for number in range(rounds):
        order = PRECISIONS if number % 2 == 0 else tuple(reversed(PRECISIONS))
        for precision in order:
            env = {"TEXTSERVE_CACHE__BACKEND": "none", "TEXTSERVE_EMBEDDING__MODEL__PRECISION": precision}
            async with ServerProcess(["embedding"], env, metrics=False, ready_limit_s=180) as server:
                for length, batch in texts.items():
                    for concurrency in CONCURRENCY:
                        stats = (await drive(server.address(), batch, concurrency, seconds)).stats()
                        cells.setdefault((length, concurrency, precision), []).append(stats.throughput)
                    for setup, rate in (await saturation(server.address(), batch, seconds)).items():
                        saturated.setdefault((length, setup, precision), []).append(rate)
            print(f"round {number + 1} {precision} done", file=sys.stderr, flush=True)
    return cells, saturated


def render(
    manifest: dict[str, Any],
    raw: dict[str, dict[str, dict[int, float]]],
    service: dict[tuple[str, int, str], list[float]],
    saturated: dict[tuple[str, str, str], list[float]],
) -> str:
    fid = manifest["fidelity"]
    lines = [
        f"INT8 artifact: {manifest['bytes'] / 1e6:.1f} MB = {manifest['size_ratio']:.1%} of fp32; "
        "cosine vs fp32 "
        f"over {fid['texts']} texts: mean {fid['mean_cosine']:.4f}, min {fid['min_cosine']:.4f}",
        "",
        "| texts | measure | fp32 texts/s | int8 texts/s | int8 / fp32 |",
        "|---|---|---:|---:|---:|",
    ]
    for length in LENGTHS:
        best = {p: max(raw[length][p].items(), key=lambda kv: kv[1]) for p in PRECISIONS}
        lines.append(
            f"| {length} | raw model, best batch (fp32 {best['fp32'][0]}, int8 {best['int8'][0]}) "
            f"| {best['fp32'][1]:.0f} | {best['int8'][1]:.0f} | {best['int8'][1] / best['fp32'][1]:.2f}x |"
        )
        for concurrency in CONCURRENCY:
            fp32 = statistics.median(service[(length, concurrency, "fp32")])
            int8 = statistics.median(service[(length, concurrency, "int8")])
            lines.append(
                f"| {length} | service, concurrency {concurrency} | {fp32:.0f} | {int8:.0f} "
                f"| {int8 / fp32:.2f}x |"
            )
        for setup in SATURATION_SETUPS:
            fp32 = statistics.median(saturated[(length, setup, "fp32")])
            int8 = statistics.median(saturated[(length, setup, "int8")])
            lines.append(f"| {length} | service, {setup} | {fp32:.0f} | {int8:.0f} | {int8 / fp32:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="measurement time per point")
    parser.add_argument("--rounds", type=int, default=2, help="service rounds (fp32/int8 order alternating)")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the INT8 artifact")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = parser.parse_args()
    manifest = ensure_artifact(args.rebuild)
    raw = measure_raw(args.seconds)
    service, saturated = asyncio.run(measure_service(args.seconds, args.rounds))
    print(render(manifest, raw, service, saturated))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "manifest": manifest,
                    "raw": raw,
                    "service": [
                        {"length": k[0], "concurrency": k[1], "precision": k[2], "texts_per_s": v}
                        for k, v in service.items()
                    ],
                    "saturation": [
                        {"length": k[0], "setup": k[1], "precision": k[2], "texts_per_s": v}
                        for k, v in saturated.items()
                    ],
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
