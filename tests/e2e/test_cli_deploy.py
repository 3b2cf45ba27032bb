"""`slmforge deploy` as a user types it: create, list, test, logs, a killed process shown as
down and restarted, delete; and `slmforge serve` itself as a process."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import httpx
import openai
import pytest

from fake_openai import FakeOpenAI
from slmforge.data.sample import write_sample
from slmforge.errors import InputError
from slmforge.runtime.engine import GenParams, complete
from slmforge.runtime.specs import load_engine

pytestmark = pytest.mark.integration


def slmforge(*args: str, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "slmforge", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


@pytest.fixture
def env(tmp_path) -> dict:
    return os.environ | {"SLMFORGE_HOME": str(tmp_path / "home"), "NO_COLOR": "1"}


def _states(env: dict) -> dict[str, str]:
    listed = slmforge("deploy", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    return {row["name"]: row["state"] for row in json.loads(listed.stdout)}


def test_deployment_lifecycle(tiny_llama, llama_adapters, env, tmp_path, monkeypatch) -> None:
    created = slmforge(
        "deploy",
        "create",
        "travel-bot",
        "--model",
        str(tiny_llama),
        "--adapter",
        f"travel={llama_adapters['travel']}",
        env=env,
    )
    assert created.returncode == 0, created.stderr
    key = re.search(r"api key \(shown once, store it now\): (\S+)", created.stdout).group(1)
    url = re.search(r"is up at (\S+)", created.stdout).group(1)
    try:
        # the key is kept hashed only, and never printed again
        home = tmp_path / "home"
        assert key not in "".join(
            p.read_text(errors="ignore")
            for p in home.rglob("*")
            if p.is_file() and p.suffix != ".db"
        )
        assert _states(env) == {"travel-bot": "up"}
        assert key not in slmforge("deploy", "list", env=env).stdout

        client = openai.OpenAI(base_url=url, api_key=key, max_retries=0)
        assert [m.id for m in client.models.list().data] == ["travel-bot", "travel"]
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url, api_key="wrong", max_retries=0).models.list()

        data = write_sample(tmp_path / "sample.jsonl")
        tested = slmforge(
            "deploy",
            "test",
            "travel-bot",
            "--data",
            str(data),
            "--limit",
            "2",
            "--max-tokens",
            "8",
            env=env | {"SLMFORGE_API_KEY": key},
        )
        assert tested.returncode == 0, tested.stderr
        assert "2 passed, 0 failed" in tested.stdout
        bad_key = slmforge(
            "deploy",
            "test",
            "travel-bot",
            "--data",
            str(data),
            "--limit",
            "1",
            "--api-key",
            "wrong",
            env=env,
        )
        assert bad_key.returncode == 1 and "0 passed, 1 failed" in bad_key.stdout

        # every stage that takes an engine spec reaches it as deploy:NAME[:ADAPTER]
        monkeypatch.setenv("SLMFORGE_HOME", env["SLMFORGE_HOME"])
        monkeypatch.setenv("SLMFORGE_API_KEY", key)
        engine = load_engine("deploy:travel-bot:travel")
        asked = complete(engine, [{"role": "user", "content": "Lisbon?"}], GenParams(max_tokens=6))
        direct = client.chat.completions.create(
            model="travel",
            messages=[{"role": "user", "content": "Lisbon?"}],
            max_tokens=6,
            temperature=0,
        )
        assert asked.text == direct.choices[0].message.content

        logs = slmforge("deploy", "logs", "travel-bot", env=env)
        assert "serving on" in logs.stdout and key not in logs.stdout

        # a killed server is shown as down, and restart brings it back on the same endpoint
        pid = int(json.loads(slmforge("deploy", "list", "--json", env=env).stdout)[0]["pid"])
        os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while _states(env)["travel-bot"] != "down" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _states(env) == {"travel-bot": "down"}
        restarted = slmforge("deploy", "restart", "travel-bot", env=env)
        assert restarted.returncode == 0, restarted.stderr
        assert _states(env) == {"travel-bot": "up"}
        assert client.models.list().data[0].id == "travel-bot"
    finally:
        deleted = slmforge("deploy", "delete", "travel-bot", env=env)
    assert deleted.returncode == 0, deleted.stderr
    assert _states(env) == {}
    with pytest.raises(httpx.TransportError):
        httpx.get(url.removesuffix("/v1") + "/health", timeout=2)


def test_a_routed_deployment_keeps_its_routing_across_a_restart(llama_onnx, env, tmp_path) -> None:
    """`deploy create --route cloud --cloud SPEC`: chat is answered by the cloud model (the
    fake OpenAI-compatible server, a stand-in for a cloud that cannot be reached here), whose
    key comes from the named env var and is stored nowhere; a killed and restarted deployment
    routes the same way."""
    with FakeOpenAI(api_key="sk-cloud-secret", default_text="The cloud answers.") as cloud:
        routed_env = env | {"CLOUD_KEY": "sk-cloud-secret"}
        created = slmforge(
            "deploy", "create", "routed", "--model", str(llama_onnx), "--route", "cloud",
            "--cloud", f"openai:cloud@{cloud.base_url}", "--cloud-key-env", "CLOUD_KEY",
            env=routed_env,
        )  # fmt: skip
        assert created.returncode == 0, created.stderr
        assert f"chat is routed: cloud, cloud openai:cloud@{cloud.base_url}" in created.stdout
        key = re.search(r"api key \(shown once, store it now\): (\S+)", created.stdout).group(1)
        url = re.search(r"is up at (\S+)", created.stdout).group(1)
        client = openai.OpenAI(base_url=url, api_key=key, max_retries=0)

        def ask() -> str:
            reply = client.chat.completions.create(
                model="routed", messages=[{"role": "user", "content": "Lisbon?"}], max_tokens=8
            )
            return reply.choices[0].message.content

        try:
            assert ask() == "The cloud answers."
            home = tmp_path / "home"
            assert "sk-cloud-secret" not in "".join(
                p.read_text(errors="ignore") for p in home.rglob("*") if p.is_file()
            )
            [listed] = json.loads(slmforge("deploy", "list", "--json", env=env).stdout)
            assert listed["route"] == {
                "route": "cloud",
                "cloud": f"openai:cloud@{cloud.base_url}",
                "cloud_key_env": "CLOUD_KEY",
            }
            os.killpg(int(listed["pid"]), signal.SIGKILL)
            restarted = slmforge("deploy", "restart", "routed", env=routed_env)
            assert restarted.returncode == 0, restarted.stderr
            cloud.requests.clear()
            assert ask() == "The cloud answers."
            assert len(cloud.chat_requests()) == 1
        finally:
            deleted = slmforge("deploy", "delete", "routed", env=env)
        assert deleted.returncode == 0, deleted.stderr
    unpaired = slmforge(
        "deploy", "create", "x", "--model", str(llama_onnx), "--cloud", "openai:a@http://h/v1",
        env=env,
    )  # fmt: skip
    assert unpaired.returncode == 2
    assert unpaired.stderr.strip() == "error: route: give both --route POLICY and --cloud SPEC"
    assert _states(env) == {}


def test_deploy_bad_input(tiny_llama, env, tmp_path) -> None:
    bad_name = slmforge("deploy", "create", "Bad_Name", "--model", str(tiny_llama), env=env)
    assert bad_name.returncode == 2
    assert "deployment name 'Bad_Name': use lowercase letters" in bad_name.stderr
    missing = slmforge("deploy", "test", "nope", "--data", "x.jsonl", "--api-key", "k", env=env)
    assert missing.returncode == 2
    assert "no deployment named 'nope' (deployments: none)" in missing.stderr
    monkeypatch_env = {"SLMFORGE_HOME": env["SLMFORGE_HOME"]}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in monkeypatch_env.items():
            patch.setenv(name, value)
        with pytest.raises(InputError, match="no deployment named 'gone'"):
            load_engine("deploy:gone")
    not_onnx = slmforge(
        "deploy", "create", "x", "--model", str(tiny_llama), "--engine", "onnx", env=env
    )
    assert not_onnx.returncode == 2 and "is not an ONNX model folder" in not_onnx.stderr


def test_serve_process_answers_and_stops_on_sigint(tiny_llama, env) -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "slmforge",
            "--log-format",
            "plain",
            "serve",
            str(tiny_llama),
            "--port",
            "0",
            "--max-tokens-cap",
            "16",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = process.stderr.readline()
        url = re.search(r"serving on (\S+)", line).group(1)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(url.removesuffix("/v1") + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        client = openai.OpenAI(base_url=url, api_key="none", max_retries=0)
        reply = client.chat.completions.create(
            model="llama", messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
        assert reply.usage.completion_tokens <= 4
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0


def test_serve_bad_input_is_one_line_and_exit_2(tiny_llama, env, tmp_path) -> None:
    missing = slmforge("serve", str(tmp_path / "nope"), "--engine", "onnx", env=env)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "is not an ONNX model folder" in missing.stderr
    bad_adapter = slmforge("serve", str(tiny_llama), "--adapter", "travel", env=env)
    assert bad_adapter.returncode == 2 and "expected NAME=PATH" in bad_adapter.stderr
    with_file = slmforge("serve", str(tiny_llama), "--api-keys-file", str(tmp_path / "k"), env=env)
    assert with_file.returncode == 2 and "cannot read it" in with_file.stderr
