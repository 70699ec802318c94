"""`textserve serve gateway` as a real process: configured from TEXTSERVE_* variables, ready once its
backend serves, answers the openai client, and exits 0 on SIGTERM after draining.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import httpx
from openai import AsyncOpenAI

from tests.support import free_port


async def test_serve_gateway_process(embedding_address: str) -> None:
    port = free_port()
    env = dict(os.environ)
    env.update(
        {
            "TEXTSERVE_GATEWAY__HOST": "127.0.0.1",
            "TEXTSERVE_GATEWAY__PORT": str(port),
            "TEXTSERVE_GATEWAY__EMBEDDING_ADDRESS": embedding_address,
            "TEXTSERVE_GATEWAY__GENERATION_ADDRESS": "",
            "TEXTSERVE_GATEWAY__GRACE_PERIOD_S": "2",
            "TEXTSERVE_METRICS__ENABLED": "false",
            "TEXTSERVE_LOG__FORMAT": "text",
        }
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "textserve.cli",
        "serve",
        "gateway",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        ready = None
        async with httpx.AsyncClient(base_url=url, timeout=5) as http:
            for _ in range(600):
                try:
                    ready = await http.get("/ready")
                    break
                except httpx.TransportError:
                    assert process.returncode is None, "gateway process exited during start-up"
                    await asyncio.sleep(0.1)
        assert ready is not None and ready.status_code == 200, ready
        async with AsyncOpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0) as client:
            result = await client.embeddings.create(input="from a real process", model="all-MiniLM-L6-v2")
        assert len(result.data[0].embedding) == 384
        process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), timeout=30)
        assert code == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        assert process.stderr is not None
        err = (await process.stderr.read()).decode(errors="replace")
        assert "Traceback" not in err, err
