"""The public client (textserve.client) against real servers on loopback.

Typed results, merging of concurrent single-text calls (counted on the server), one bad text
failing only its caller, deadlines (in a merged call and towards a server that is down),
TLS with bearer tokens, the blocking client from many threads, and retries across a server
killed and restarted in the middle of a run.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from textserve.client import (
    AsyncTextserveClient,
    ClientOptions,
    DeadlineExceeded,
    InvalidInput,
    PermissionDenied,
    TextserveClient,
    TlsConfig,
    Unauthenticated,
)
from textserve.core import metrics
from textserve.core.config import AuthConfig, ModelConfig
from textserve.transport.server import ServiceHost

from tests.pki import Pki, make_pki
from tests.procs import ServeProcess
from tests.support import ONNX_CACHE, embedding_config, free_port, loopback_server, start_host

TOKEN = "client-test-token"


def _served_embeds() -> float:
    """Embed RPCs the in-process servers answered OK so far."""
    value = metrics.REGISTRY.get_sample_value(
        "textserve_requests_total", {"service": "embedding", "method": "Embed", "code": "OK"}
    )
    return value or 0.0


async def test_typed_results_and_merged_single_text_calls(embedding_address: str) -> None:
    async with AsyncTextserveClient(embedding=embedding_address) as client:
        batch = await client.embed_batch(["one text", "another text"], normalize=True)
        assert batch.vectors.shape == (2, 384) and batch.vectors.dtype == np.float32
        assert np.allclose(np.linalg.norm(batch.vectors, axis=1), 1.0, atol=1e-4)
        assert batch.model.name and batch.usage.input_tokens == sum(batch.input_tokens)

        texts = [f"single text number {i}" for i in range(200)]
        before = _served_embeds()
        vectors = await asyncio.gather(*(client.embed(text, normalize=True) for text in texts))
        served = _served_embeds() - before
        # Merged: far fewer RPCs than callers, and each caller got the vector of its own text.
        assert 1 <= served <= 200 / 8, served
        assert served == client.merged_calls  # every merged call is one Embed RPC
        alone = await client.embed_batch(texts[:3], normalize=True)
        assert np.allclose(np.stack(vectors[:3]), alone.vectors, atol=1e-5)


async def test_one_bad_text_fails_only_its_caller(embedding_address: str) -> None:
    texts = [f"good text {i}" for i in range(40)]
    texts[7] = "   "
    texts[23] = ""
    async with AsyncTextserveClient(embedding=embedding_address) as client:
        results = await asyncio.gather(*(client.embed(text) for text in texts), return_exceptions=True)
    for index, result in enumerate(results):
        if index in (7, 23):
            assert isinstance(result, InvalidInput), result
            assert result.field == "texts[0]", result.field
        else:
            assert isinstance(result, np.ndarray) and result.shape == (384,), result


async def test_deadlines(embedding_address: str) -> None:
    async with AsyncTextserveClient(embedding=embedding_address) as client:
        # A caller whose deadline cannot be met fails alone; the callers merged with it are served.
        calls = [client.embed(f"patient {i}", timeout=60) for i in range(10)]
        calls.append(client.embed("in a hurry", timeout=1e-6))
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert isinstance(results[-1], DeadlineExceeded), results[-1]
        assert all(isinstance(result, np.ndarray) for result in results[:-1]), results

    # A server that is not there: the call waits for it within its deadline, then fails with it.
    nowhere = f"127.0.0.1:{free_port()}"
    async with AsyncTextserveClient(embedding=nowhere) as client:
        with pytest.raises(DeadlineExceeded):
            await client.embed("anyone?", timeout=0.5)
        with pytest.raises(DeadlineExceeded):
            await client.embed_batch(["anyone?"], timeout=0.5)


async def test_blocking_client_merges_calls_from_threads(embedding_address: str) -> None:
    def run() -> tuple[list[np.ndarray], int]:  # off the event loop that serves the test's server
        with TextserveClient(embedding=embedding_address) as client:
            with ThreadPoolExecutor(max_workers=16) as pool:
                vectors = list(pool.map(lambda i: client.embed(f"thread text {i}"), range(64)))
            return vectors, client.merged_calls

    vectors, merged_calls = await asyncio.to_thread(run)
    assert all(vector.shape == (384,) for vector in vectors)
    assert merged_calls < 64


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("client-pki"), "client")


@pytest.fixture(scope="module")
async def secured_host(pki: Pki) -> AsyncIterator[ServiceHost]:
    from textserve.embedding.app import EmbeddingApp

    tls = TlsConfig(enabled=True, cert_file=pki.server.cert, key_file=pki.server.key)
    auth = AuthConfig(enabled=True, tokens=[TOKEN])  # type: ignore[list-item]
    host = await start_host([EmbeddingApp(embedding_config(server=loopback_server(tls=tls, auth=auth)))])
    yield host
    await host.stop(grace=1.0)


async def test_tls_and_bearer_token(secured_host: ServiceHost, pki: Pki, tmp_path: Path) -> None:
    address = f"127.0.0.1:{secured_host.port_of('embedding')}"
    tls = TlsConfig(enabled=True, ca_file=pki.ca)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    for options in (ClientOptions(tls=tls, token=TOKEN), ClientOptions(tls=tls, token_file=token_file)):
        async with AsyncTextserveClient(embedding=address, options=options) as client:
            assert (await client.embed("secured")).shape == (384,)
    async with AsyncTextserveClient(embedding=address, options=ClientOptions(tls=tls)) as client:
        with pytest.raises(Unauthenticated):
            await client.embed("no token", timeout=10)
    wrong = ClientOptions(tls=tls, token="not-the-token")
    async with AsyncTextserveClient(embedding=address, options=wrong) as client:
        with pytest.raises(PermissionDenied):
            await client.embed_batch(["wrong token"], timeout=10)


async def test_tokenizer_calls() -> None:
    from textserve.tokenizer.app import TokenizerApp
    from textserve.tokenizer.config import TokenizerServiceConfig

    host = await start_host(
        [TokenizerApp(TokenizerServiceConfig(server=loopback_server(), models=[ModelConfig()]))]
    )
    try:
        async with AsyncTextserveClient(tokenizer=f"127.0.0.1:{host.port_of('tokenizer')}") as client:
            tokens = await client.tokenize(["Hello, world!"])
            encoding = tokens.encodings[0]
            assert encoding.tokens[0] == "[CLS]" and len(encoding.ids) == len(encoding.offsets)
            assert await client.count_tokens(["Hello, world!"]) == [len(encoding.ids)]
            text = (await client.detokenize([encoding.ids]))[0]
            assert text == "hello, world!"
    finally:
        await host.stop(grace=1.0)


async def test_a_server_restarted_mid_run_is_invisible_to_callers(tmp_path: Path) -> None:
    port = free_port()
    settings = {
        "metrics": {"enabled": False},
        "cache": {"backend": "none"},
        "embedding": {
            "server": {"host": "127.0.0.1", "port": port, "grace_period_s": 1.0},
            "model": {"onnx_cache_dir": str(ONNX_CACHE)},
        },
    }
    process = ServeProcess(tmp_path, ["embedding"], settings)
    process.start()
    address = f"127.0.0.1:{port}"
    try:
        await process.wait_serving(address)
        served = 0
        restarted, warmed_up = asyncio.Event(), asyncio.Event()
        async with AsyncTextserveClient(embedding=address, options=ClientOptions(timeout_s=180)) as client:

            async def caller(index: int) -> None:
                nonlocal served
                for call in range(40):
                    if call == 10:
                        await restarted.wait()  # part of every caller's run is after the restart
                    vector = await client.embed(f"caller {index} call {call}", skip_cache=True)
                    assert vector.shape == (384,)
                    served += 1
                    if served >= 40:
                        warmed_up.set()

            async def restart() -> None:
                await warmed_up.wait()  # 40 calls served before the kill
                process.kill()  # kill -9: calls in flight fail on the wire, new ones find no server
                process.start()
                restarted.set()

            await asyncio.gather(restart(), *(caller(i) for i in range(8)))
        assert served == 8 * 40
    finally:
        process.kill()
