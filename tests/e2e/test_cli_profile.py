"""`slmforge profile ...` and `profile:NAME` as a user types them, against a local server.

The cloud services a profile names (OpenAI, Azure OpenAI) cannot be reached from tests: there
is no network here, and real calls would cost money and not repeat. `FakeOpenAI` stands in for
them on 127.0.0.1: the same OpenAI wire format, the same 401 for a wrong key (echoing the key
it was given, as the real service does, so a leak would show). For Azure OpenAI the test adds
the deployment route with the `api-key` header and `api-version` query Azure uses.
"""

from __future__ import annotations

import io
import json
import re
import stat
from pathlib import Path

import keyring
import pytest
from fastapi import Request
from fastapi.responses import JSONResponse, Response

from fake_openai import FakeOpenAI, RecordedRequest
from memory_keyring import MemoryKeyring
from slmforge.cli.main import main

KEY = "sk-e2e-secret-7c1f0b9d2a64"
WRONG_KEY = "sk-wrong-key-55aa77bb99cc"
API_VERSION = "2024-10-21"


class Cli:
    """Runs `slmforge ...` in-process and keeps every byte it wrote, to grep for keys."""

    def __init__(self, capsys, monkeypatch) -> None:
        self.capsys, self.monkeypatch = capsys, monkeypatch
        self.outputs: list[str] = []

    def __call__(self, *argv: str, stdin: str = "") -> tuple[int, str, str]:
        self.monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        with pytest.raises(SystemExit) as exit_info:
            main(list(argv))
        captured = self.capsys.readouterr()
        self.outputs += [captured.out, captured.err]
        return exit_info.value.code, captured.out, captured.err


@pytest.fixture
def cli(capsys, monkeypatch, tmp_path: Path) -> Cli:
    monkeypatch.setenv("SLMFORGE_HOME", str(tmp_path / "home"))
    previous = keyring.get_keyring()
    keyring.set_keyring(MemoryKeyring())  # never the real system keyring
    yield Cli(capsys, monkeypatch)
    keyring.set_keyring(previous)


def _add_azure_route(fake: FakeOpenAI) -> None:
    """Azure OpenAI's chat route: /openai/deployments/NAME/chat/completions?api-version=..."""

    @fake.app.post("/openai/deployments/{deployment}/chat/completions")
    async def azure_chat(deployment: str, request: Request) -> Response:
        body = await request.json()
        path = f"{request.url.path}?{request.url.query}"
        fake.requests.append(RecordedRequest(path, dict(request.headers), body))
        if request.headers.get("api-key") != fake.api_key:
            message = (
                f"Access denied due to invalid subscription key {request.headers.get('api-key')}"
            )
            return JSONResponse({"error": {"code": "401", "message": message}}, status_code=401)
        return fake._answer({**body, "model": deployment}, fake._next_reply(body))


@pytest.fixture(scope="module")
def fake():
    server = FakeOpenAI(api_key=KEY)
    _add_azure_route(server)
    with server:
        yield server


@pytest.fixture(autouse=True)
def _reset(fake: FakeOpenAI):
    fake.reset()


def _assert_no_key_anywhere(cli: Cli, home: Path) -> None:
    files = [p for p in home.rglob("*") if p.is_file() and p.parent.name != "keys"]
    texts = cli.outputs + [p.read_text(encoding="utf-8") for p in files]
    assert texts and not [t for t in texts if KEY in t or WRONG_KEY in t]


TEST_LINE = re.compile(
    r"^profile (\S+): ok, model (\S+) at (\S+), latency (\d+) ms, first token (\d+) ms, "
    r"reply '(.*)'$"
)


def test_env_key_profile_round_trip(cli: Cli, fake: FakeOpenAI, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("FAKE_KEY", KEY)
    code, out, _ = cli(
        "profile", "add", "fake", "--kind", "compatible", "--base-url", fake.base_url,
        "--model", "fake-model", "--api-key-env", "FAKE_KEY",
    )  # fmt: skip
    assert code == 0 and out.startswith("saved profile fake: compatible ")
    code, out, _ = cli("profile", "list", "--json")
    (entry,) = json.loads(out)
    assert entry["name"] == "fake" and entry["base_url"] == fake.base_url
    assert entry["key_location"] == "env FAKE_KEY (set)" and entry["key_available"] is True

    code, out, _ = cli("--log-format", "json", "profile", "test", "fake")
    assert code == 0
    match = TEST_LINE.match(out.strip())
    assert match, out
    assert match.groups()[:3] == ("fake", "fake-model", fake.base_url)
    assert int(match.group(4)) >= int(match.group(5))
    assert match.group(6) == "This is the fake model speaking."
    request = fake.chat_requests()[-1]
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.body["model"] == "fake-model" and request.body["max_tokens"] == 8

    # the same profile wherever an engine is named: chat, data synth
    fake.script("Hello from the profile.")
    code, out, _ = cli("chat", "profile:fake", stdin="hi\n")
    assert code == 0 and out.strip() == "Hello from the profile."
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(
        "".join(
            json.dumps({"prompt": f"Question {i}?", "response": f"Answer {i}."}) + "\n"
            for i in range(3)
        )
    )
    pairs = [{"prompt": "How do I reach Sintra?", "response": "Take the train from Rossio."}]
    fake.script(json.dumps(pairs))
    synth_out = tmp_path / "synth.jsonl"
    code, _, err = cli(
        "data", "synth", str(seeds), "--teacher", "profile:fake", "--count", "1",
        "--seed-examples", "2", "--out", str(synth_out),
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(synth_out.read_text().splitlines()[0])["prompt"] == "How do I reach Sintra?"
    assert fake.chat_requests()[-1].headers["authorization"] == f"Bearer {KEY}"

    code, out, _ = cli("profile", "remove", "fake")
    assert (code, out) == (0, "removed profile fake\n")
    code, out, _ = cli("profile", "list", "--json")
    assert json.loads(out) == []
    _assert_no_key_anywhere(cli, tmp_path / "home")


def test_stored_keys_in_keyring_and_file(cli: Cli, fake: FakeOpenAI, tmp_path: Path) -> None:
    code, out, _ = cli(
        "profile", "add", "kr", "--kind", "compatible", "--base-url", fake.base_url,
        "--model", "fake-model", stdin=KEY + "\n",
    )  # fmt: skip
    assert code == 0 and out.rstrip().endswith("key: keyring")
    assert keyring.get_password("slmforge", "profile:kr") == KEY
    code, out, _ = cli(
        "profile", "add", "kf", "--kind", "compatible", "--base-url", fake.base_url,
        "--model", "fake-model", "--store-key-in-file", stdin=KEY + "\n",
    )  # fmt: skip
    key_path = tmp_path / "home" / "keys" / "kf.key"
    assert code == 0 and out.rstrip().endswith(f"key: file {key_path}")
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    for name in ("kr", "kf"):
        code, out, err = cli("profile", "test", name)
        assert code == 0 and TEST_LINE.match(out.strip()), err
    code, out, _ = cli("profile", "list")
    assert "kr" in out and "keyring" in out and "kf" in out
    _assert_no_key_anywhere(cli, tmp_path / "home")


def test_wrong_key_is_a_clear_401(cli: Cli, fake: FakeOpenAI, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("FAKE_KEY", WRONG_KEY)
    cli(
        "profile", "add", "fake", "--kind", "compatible", "--base-url", fake.base_url,
        "--model", "fake-model", "--api-key-env", "FAKE_KEY",
    )  # fmt: skip
    expected = (
        f"error: profile 'fake': {fake.base_url} rejected the API key (HTTP 401) from env "
        "FAKE_KEY (set); set the right key and run slmforge profile test fake again\n"
    )
    code, out, err = cli("profile", "test", "fake")
    assert (code, out, err) == (1, "", expected)
    # the server echoed the wrong key in its 401 body: neither --debug nor JSON logs show it
    code, _, err = cli("--debug", "--log-format", "json", "profile", "test", "fake")
    assert code == 1 and err.endswith(expected) and "Traceback" in err
    code, _, err = cli("chat", "profile:fake", stdin="hi\n")
    assert code == 1 and "HTTP 401" in err and "check the API key" in err
    assert len(fake.chat_requests()) == 3  # a 401 is not retried
    _assert_no_key_anywhere(cli, tmp_path / "home")


def test_azure_openai_profile(cli: Cli, fake: FakeOpenAI, tmp_path: Path) -> None:
    endpoint = fake.base_url.removesuffix("/v1")
    code, _, err = cli(
        "profile", "add", "az", "--kind", "azure-openai", "--base-url", endpoint,
        "--api-version", API_VERSION, "--deployment", "gpt-4o-mini", "--store-key-in-file",
        stdin=KEY + "\n",
    )  # fmt: skip
    assert code == 0, err
    code, out, err = cli("profile", "test", "az")
    assert code == 0, err
    match = TEST_LINE.match(out.strip())
    assert match and match.groups()[:3] == ("az", "gpt-4o-mini", endpoint)
    (request,) = fake.requests
    assert request.path == (
        f"/openai/deployments/gpt-4o-mini/chat/completions?api-version={API_VERSION}"
    )
    assert request.headers["api-key"] == KEY
    _assert_no_key_anywhere(cli, tmp_path / "home")
