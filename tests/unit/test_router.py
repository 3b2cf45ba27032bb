"""The router's policies with scripted stand-in engines: who answers, why, and the fallbacks
(errors, first-token and overall timeouts, content filter blocks), plus `settled` and the
decision log. Timeouts are driven by engines that wait on a gate the test holds shut, so no
test sleeps for timing."""

from __future__ import annotations

import io
import json

import pytest

from router_stand_ins import Blocking, Scripted
from slmforge import progress
from slmforge.config.app import RouteSettings
from slmforge.errors import InputError, RemoteError
from slmforge.routing.router import Decision, Part, Router, settled
from slmforge.runtime.engine import GenParams

ASK = [{"role": "user", "content": "Where should I go in Lisbon?"}]
PARAMS = GenParams(max_tokens=16)


def run(router: Router, policy: str, **options) -> list:
    return list(router.chat(ASK, options.pop("params", PARAMS), policy=policy, **options))


def decisions(events) -> list[Decision]:
    return [e for e in events if isinstance(e, Decision)]


def text(events, side: str) -> str:
    return "".join(
        e.delta.text for e in events if isinstance(e, Part) and e.side == side and e.delta
    )


@pytest.fixture
def engines():
    local = Scripted("local", "local says hi", adapters=("travel",))
    cloud = Scripted("cloud", "cloud says hello")
    yield local, cloud
    local.gate.set()  # let any engine a timeout abandoned finish
    cloud.gate.set()


def test_local_and_cloud_policies_use_their_side(engines) -> None:
    local, cloud = engines
    router = Router(local, cloud)
    events = run(router, "local", adapter="travel")
    assert events[0] == Decision("local", ("local",), events[0].reason)
    assert text(events, "local") == "local says hi" and text(events, "cloud") == ""
    assert local.calls[0][2] == "travel"
    events = run(router, "cloud")
    assert decisions(events)[0].sides == ("cloud",)
    assert text(events, "cloud") == "cloud says hello"
    final = next(e.delta for e in events if isinstance(e, Part) and e.delta.finish_reason)
    assert final.usage.completion_tokens == 3 and final.timings.total_s >= 0


def test_compare_streams_both_sides_and_a_failing_side_does_not_stop_the_other(engines) -> None:
    local, cloud = engines
    events = run(Router(local, cloud), "compare")
    assert decisions(events) == [Decision("compare", ("local", "cloud"), events[0].reason)]
    assert text(events, "local") == "local says hi"
    assert text(events, "cloud") == "cloud says hello"
    broken = Scripted("cloud", fail=RemoteError("cloud: HTTP 500: boom"))
    events = run(Router(local, broken), "compare")
    assert text(events, "local") == "local says hi"
    assert [e.error for e in events if isinstance(e, Part) and e.error] == ["cloud: HTTP 500: boom"]


def test_compare_gives_each_side_its_own_conversation(engines) -> None:
    local, cloud = engines
    own = [{"role": "user", "content": "cloud thread"}]
    run(Router(local, cloud), "compare", cloud_messages=own)
    assert local.calls[0][0] == ASK and cloud.calls[0][0] == own


def test_local_first_keeps_a_good_local_answer(engines) -> None:
    local, cloud = engines
    events = run(Router(local, cloud), "local-first")
    assert decisions(events) == [
        Decision(
            "local-first", ("local",), "local-first asks the local model first", provisional=True
        )
    ]
    assert text(events, "local") == "local says hi" and not cloud.calls
    kept = list(settled(iter(events)))  # held to the end, then released as final
    assert decisions(kept)[0].provisional is False and text(kept, "local") == "local says hi"


def test_local_first_falls_back_on_an_error(engines) -> None:
    _, cloud = engines
    local = Scripted("local", fail=RuntimeError("onnxruntime exploded"))
    events = run(Router(local, cloud), "local-first")
    fallback = decisions(events)[-1]
    assert fallback.sides == ("cloud",) and fallback.fallback
    assert fallback.reason == "fell back to the cloud: the local model failed: onnxruntime exploded"
    assert text(events, "cloud") == "cloud says hello"


def test_local_first_falls_back_when_the_first_token_is_late(engines) -> None:
    _, cloud = engines
    local = Scripted("local", gate_at=0)  # prefill never ends while the gate is shut
    settings = RouteSettings(ttft_timeout_s=0.05, timeout_s=30)
    try:
        events = run(Router(local, cloud, settings), "local-first")
    finally:
        local.gate.set()
    reason = decisions(events)[-1].reason
    assert reason == "fell back to the cloud: the local model gave no first token within 50 ms"
    assert text(events, "cloud") == "cloud says hello"


def test_local_first_falls_back_when_the_answer_takes_too_long(engines) -> None:
    _, cloud = engines
    local = Scripted("local", "one two three", gate_at=1)  # the first word, then it stalls
    settings = RouteSettings(ttft_timeout_s=10, timeout_s=0.1)
    try:
        events = run(Router(local, cloud, settings), "local-first")
    finally:
        local.gate.set()
    assert text(events, "local") == "one"  # streamed, then replaced by the fallback
    assert decisions(events)[-1].reason.endswith("the local model did not finish within 0.1s")
    # a consumer that cannot take text back never sees the replaced answer
    kept = list(settled(iter(events)))
    assert text(kept, "local") == "" and text(kept, "cloud") == "cloud says hello"
    assert [d.fallback for d in decisions(kept)] == [True]


def test_a_request_can_tighten_the_timeouts(engines) -> None:
    _, cloud = engines
    local = Scripted("local", gate_at=0)
    try:
        events = run(
            Router(local, cloud), "local-first", settings=RouteSettings(ttft_timeout_s=0.01)
        )
    finally:
        local.gate.set()
    assert "no first token within 10 ms" in decisions(events)[-1].reason


@pytest.mark.parametrize(
    ("local_words", "question", "finish", "why"),
    [
        ("fine words", "tell me about zebras", "stop", "the prompt (zebras is blocked)"),
        ("zebras everywhere", "tell me", "stop", "the answer (zebras is blocked)"),
        ("partial", "tell me", "content_filter", "the answer (its server's filter)"),
    ],
    ids=["prompt", "answer", "local-server-filter"],
)
def test_local_first_falls_back_on_a_content_filter_block(
    engines, local_words, question, finish, why
) -> None:
    _, cloud = engines
    local = Scripted("local", local_words, finish=finish)
    router = Router(local, cloud, content_filter=Blocking("zebras"))
    events = list(router.chat([{"role": "user", "content": question}], PARAMS, "local-first"))
    assert (
        decisions(events)[-1].reason == f"fell back to the cloud: the content filter blocked {why}"
    )
    assert text(events, "cloud") == "cloud says hello"
    assert "zebras" not in text(events, "local")  # blocked text is never released


def test_the_local_policy_ends_a_blocked_answer_with_content_filter(engines) -> None:
    _, cloud = engines
    router = Router(Scripted("local", "zebras run"), cloud, content_filter=Blocking("zebras"))
    events = run(router, "local")
    finals = [e.delta.finish_reason for e in events if isinstance(e, Part)]
    assert finals == ["content_filter"] and not cloud.calls


def test_cost_sends_long_prompts_to_the_cloud(engines) -> None:
    local, cloud = engines
    events = run(Router(local, cloud, RouteSettings(long_prompt_tokens=3)), "cost")
    assert decisions(events)[0].reason == "long prompt: 6 tokens > 3"
    assert text(events, "cloud") == "cloud says hello" and not local.calls


def test_cost_keeps_a_confident_local_answer_and_hides_the_probe_logprobs(engines) -> None:
    local, cloud = engines
    settings = RouteSettings(min_mean_logprob=-1.0, confidence_tokens=2)
    events = run(Router(local, cloud, settings), "cost")
    decision = decisions(events)[0]
    assert decision.sides == ("local",)
    assert (
        decision.reason == "short prompt (6 tokens), local is confident (mean token logprob -0.10)"
    )
    assert text(events, "local") == "local says hi" and not cloud.calls
    assert all(e.delta.logprobs is None for e in events if isinstance(e, Part))
    assert local.calls[0][1].logprobs  # the router asked for them to judge confidence


def test_cost_asks_the_cloud_when_local_is_unsure(engines) -> None:
    _, cloud = engines
    local = Scripted("local", "um er well", logprob=-4.0)
    events = run(Router(local, cloud, RouteSettings(min_mean_logprob=-2.5)), "cost")
    assert decisions(events)[0].reason == "low local confidence: mean token logprob -4.00 < -2.5"
    assert text(events, "local") == "" and text(events, "cloud") == "cloud says hello"


def test_cost_falls_back_when_local_fails(engines) -> None:
    _, cloud = engines
    local = Scripted("local", fail=RuntimeError("no memory"))
    events = run(Router(local, cloud), "cost")
    assert decisions(events)[0].reason == "local failed: the local model failed: no memory"
    assert text(events, "cloud") == "cloud says hello"


def test_cost_estimates_tokens_without_a_tokenizer(engines) -> None:
    _, cloud = engines
    remote_local = Scripted("local")
    remote_local.prompt_ids = None  # a remote "local" engine has no tokenizer
    events = run(Router(remote_local, cloud, RouteSettings(long_prompt_tokens=2)), "cost")
    assert decisions(events)[0].reason == "long prompt: 7 tokens (estimated) > 2"


def test_bad_policy_and_adapter_are_input_errors(engines) -> None:
    local, cloud = engines
    with pytest.raises(InputError, match="unknown routing policy 'fastest'"):
        run(Router(local, cloud), "fastest")
    with pytest.raises(InputError, match=r"unknown adapter 'terse' \(known: travel\)"):
        run(Router(local, cloud), "local", adapter="terse")


def test_every_decision_is_logged_without_the_prompt(engines) -> None:
    _local, cloud = engines
    stream = io.StringIO()
    progress.configure("json", stream=stream)
    try:
        run(Router(Scripted("local", fail=RuntimeError("x")), cloud), "local-first")
    finally:
        progress.configure("plain")
    logged = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [entry["sides"] for entry in logged] == [["local"], ["cloud"]]
    assert logged[1]["message"].startswith("route local-first -> cloud: fell back")
    assert "Lisbon" not in stream.getvalue()
