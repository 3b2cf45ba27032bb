"""`slmforge serve --backend ray --replicas 2`: two Ray Serve replicas behind one endpoint on
this machine, answering the OpenAI API like the single-process server."""

from __future__ import annotations

import concurrent.futures
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from contextlib import closing, suppress

import httpx
import openai
import pytest

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_ray_replicas_share_the_load(tiny_llama) -> None:
    port = _free_port()
    # Ray's socket paths must stay under 108 bytes: a short temp folder, not pytest's
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    env = os.environ | {"RAY_TMPDIR": ray_tmp, "RAY_AUTH_MODE": "disabled"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "slmforge",
            "--log-format",
            "plain",
            "serve",
            str(tiny_llama),
            "--backend",
            "ray",
            "--replicas",
            "2",
            "--replica-cpus",
            "0.5",
            "--port",
            str(port),
            "--api-key",
            "sk-ray",
            "--max-concurrency",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        output = []
        for line in process.stdout:  # ends if the process exits
            output.append(line)
            if "Ray Serve replicas" in line and line.startswith("serving on"):
                break
        assert process.poll() is None, "".join(output)
        assert "with 2 Ray Serve replicas" in output[-1]
        assert httpx.get(f"{url}/health", timeout=5).status_code == 200
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-ray", max_retries=2)
        assert [m.id for m in client.models.list().data] == ["llama"]

        def ask(index: int) -> str:
            response = client.chat.completions.with_raw_response.create(
                model="llama",
                messages=[{"role": "user", "content": f"trip {index}"}],
                max_tokens=24,
                temperature=0,
            )
            assert response.parse().choices[0].message.content is not None
            return response.headers["x-slmforge-replica"]

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            replicas = set(pool.map(ask, range(16)))
        assert len(replicas) == 2, replicas
        assert all(re.fullmatch(r".+:\d+", r) for r in replicas)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}/v1", api_key="bad", max_retries=0).models.list()
    finally:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        shutil.rmtree(ray_tmp, ignore_errors=True)
