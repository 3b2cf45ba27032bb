"""The web app's API over stand-in engines (no model, no browser), the judge's preference,
Azure options for the cloud side, and `slmforge app`'s one-line errors."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from router_stand_ins import Scripted
from slmforge.app import api
from slmforge.app.api import AppState, create_app
from slmforge.app.scoring import PairJudge
from slmforge.cli.main import main
from slmforge.routing.router import Router
from slmforge.runtime.engine import Delta
from slmforge.runtime.remote import RemoteEngine
from slmforge.runtime.specs import azure_api_version, default_key_env, parse_engine_spec

AZURE = "https://my-resource.openai.azure.com"


def events(response) -> list[dict]:
    return [
        json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")
    ]


@pytest.fixture
def client() -> TestClient:
    local = Scripted("local", "local says hi", adapters=("travel", "terse"))
    cloud = Scripted("cloud", "cloud says hello")
    state = AppState(
        Router(local, cloud), "tiny-onnx", "openai:gpt@https://x/v1", "travel", "compare"
    )
    return TestClient(create_app(state))


def test_config_names_the_models_adapters_and_policies(client) -> None:
    config = client.get("/api/config").json()
    assert config["local"] == {
        "name": "tiny-onnx",
        "adapters": ["travel", "terse"],
        "adapter": "travel",
    }
    assert config["cloud"] == {"name": "openai:gpt@https://x/v1"}
    assert config["policies"] == ["local", "cloud", "compare", "local-first", "cost"]
    assert config["settings"]["ttft_timeout_s"] == 10.0 and config["judge"] is False


def test_chat_streams_a_decision_then_each_side_then_end(client) -> None:
    body = {
        "messages": [{"role": "user", "content": "hi"}],
        "policy": "compare",
        "adapter": "terse",
    }
    got = events(client.post("/api/chat", json=body))
    assert got[0]["type"] == "decision" and got[0]["sides"] == ["local", "cloud"]
    for side, words in (("local", "local says hi"), ("cloud", "cloud says hello")):
        deltas = [e for e in got if e["type"] == "delta" and e["side"] == side]
        assert "".join(d["text"] for d in deltas) == words
        assert [d["n"] for d in deltas] == [1, 2, 3]
        (done,) = [e for e in got if e["type"] == "done" and e["side"] == side]
        assert done["usage"]["completion_tokens"] == 3 and done["timings"]["total_s"] >= 0
    assert got[-1] == {"type": "end"}


def test_a_request_timeout_of_the_page_reaches_the_router(client) -> None:
    local = client.app.state.slmforge.router.local
    local.gate_at = 0  # the local model never produces its first token while the gate is shut
    body = {
        "messages": [{"role": "user", "content": "hi"}],
        "policy": "local-first",
        "ttft_timeout_ms": 20,
    }
    try:
        got = events(client.post("/api/chat", json=body))
    finally:
        local.gate.set()
    decisions = [e for e in got if e["type"] == "decision"]
    assert decisions[-1]["fallback"] and decisions[-1]["reason"].endswith("within 20 ms")


def test_bad_requests_are_refused_before_streaming(client) -> None:
    ask = [{"role": "user", "content": "hi"}]
    response = client.post("/api/chat", json={"messages": ask, "adapter": "nope"})
    assert response.status_code == 400
    assert response.json() == {"error": "unknown adapter 'nope' (known: travel, terse)"}
    response = client.post("/api/chat", json={"messages": ask, "policy": "fastest"})
    assert response.status_code == 422
    assert client.post("/api/chat", json={"messages": []}).status_code == 422


def test_the_page_and_its_files_are_served_and_nothing_else(client) -> None:
    assert "<title>slmforge app</title>" in client.get("/").text
    assert client.get("/static/app.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/static/app.css").status_code == 200
    assert client.get("/static/api.py").status_code == 404
    assert client.get("/static/..%2F__init__.py").status_code == 404


def test_compare_scores_similarity_and_the_judges_preference(client, monkeypatch) -> None:
    monkeypatch.setattr(api, "similarity_or_reason", lambda a, b: (0.5, None))
    judge = Scripted("judge", "x")
    replies = iter(['{"score": 2, "reason": "vague"}', '{"score": 5, "reason": "on topic"}'])
    judge.generate = lambda *args, **kwargs: iter([Delta(text=next(replies))])
    client.app.state.slmforge.judge = PairJudge(judge, "judge")
    body = {"question": "q?", "local": "a", "cloud": "b"}
    result = client.post("/api/compare", json=body).json()
    assert result["similarity"] == 0.5
    assert result["judge"] == {
        "preferred": "cloud",
        "reason": "relevance local 2 vs cloud 5: on topic",
        "scores": {"local": 2.0, "cloud": 5.0},
    }


def test_a_judge_without_a_usable_score_prefers_nothing() -> None:
    judge = Scripted("judge", "I cannot decide")
    preference = PairJudge(judge, "judge").prefer("q?", {"local": "a", "cloud": "b"})
    assert preference.preferred is None
    assert preference.reason.startswith("the judge gave no usable score (local: no JSON object")


def test_azure_endpoints_take_the_api_version_and_key_from_env(monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_VERSION", "2024-10-21")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert azure_api_version(AZURE, None) == "2024-10-21"
    assert azure_api_version(AZURE, "2025-01-01") == "2025-01-01"
    assert azure_api_version(f"{AZURE}/openai/v1", None) is None  # the v1 API needs none
    assert azure_api_version("http://127.0.0.1:8000/v1", None) is None
    assert default_key_env(parse_engine_spec(f"openai:gpt-4o@{AZURE}")) == "AZURE_OPENAI_API_KEY"
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "sk-azure-secret-1234")
    from slmforge.app.server import check_spec, cloud_engine
    from slmforge.config.app import AppConfig

    options = AppConfig(local=".", cloud=f"openai:gpt-4o@{AZURE}")
    engine = cloud_engine(check_spec("cloud", options.cloud), options)
    assert isinstance(engine, RemoteEngine) and "secret" not in engine.name
    assert type(engine._client).__name__ == "AzureOpenAI"
    state = AppState(Router(Scripted("local"), engine), "tiny", engine.name, None, "compare")
    page = TestClient(create_app(state))
    assert "secret" not in page.get("/api/config").text + page.get("/").text


def test_app_is_a_group_whose_compare_needs_none_of_the_apps_options(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["app", "compare", "--help"])
    assert exit_info.value.code == 0 and "--data" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--local", "no/such/folder", "--cloud", "openai:m@http://127.0.0.1:9/v1"],
            "error: --local: no such folder: no/such/folder; give an ONNX folder (slmforge "
            "optimize), a model or adapter folder, or openai:MODEL@BASE_URL, profile:NAME or "
            "deploy:NAME",
        ),
        (
            ["--local", ".", "--cloud", "http://127.0.0.1:9/v1"],
            "error: --cloud: engine spec 'http://127.0.0.1:9/v1' is a URL; did you mean "
            "openai:MODEL@http://127.0.0.1:9/v1?",
        ),
        (["--local", "."], "error: --cloud: required"),
        (["--cloud", "openai:m"], "error: --local: required"),
    ],
)
def test_app_errors_are_one_line_and_exit_2(argv, message, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["app", *argv])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.strip().splitlines() == [message], err


class _Calling(Scripted):
    """Answers with one tool call (as a local engine's parser or a cloud endpoint gives it)."""

    def generate(self, messages, params, adapter=None):
        from slmforge.runtime.engine import ToolCall, Usage

        self.calls.append((messages, params, adapter))
        yield Delta(tool_calls=[ToolCall("call_1", "get_weather", '{"city": "Oslo"}')])
        yield Delta(finish_reason="tool_calls", usage=Usage(3, 9))


def test_tools_and_response_formats_reach_both_sides_and_calls_come_back() -> None:
    local, cloud = _Calling("local"), _Calling("cloud")
    state = AppState(Router(local, cloud), "tiny", "openai:gpt@https://x/v1", None, "compare")
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    fmt = {"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}}}
    history = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "tool_calls": [{"id": "call_0", "type": "function",
         "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_0", "content": "3C"},
        {"role": "user", "content": "And in Oslo?"},
    ]  # fmt: skip
    body = {"messages": history, "tools": tools, "tool_choice": "required", "response_format": fmt}
    got = events(TestClient(create_app(state)).post("/api/chat", json=body))
    for side, engine in (("local", local), ("cloud", cloud)):
        (event,) = [e for e in got if e["type"] == "tool_calls" and e["side"] == side]
        assert event["calls"] == [{"id": "call_1", "name": "get_weather",
                                   "arguments": '{"city": "Oslo"}'}]  # fmt: skip
        messages, params, _ = engine.calls[0]
        assert params.tools == tools and params.tool_choice == "required"
        assert params.json_schema == fmt["json_schema"]
        assert messages[1]["tool_calls"][0]["id"] == "call_0" and "tool_call_id" not in messages[1]
        assert messages[2] == {"role": "tool", "content": "3C", "tool_call_id": "call_0"}
    finishes = {e["side"]: e["finish_reason"] for e in got if e["type"] == "done"}
    assert finishes == {"local": "tool_calls", "cloud": "tool_calls"}
