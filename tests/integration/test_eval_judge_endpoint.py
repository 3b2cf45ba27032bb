"""The judge path against a local OpenAI-compatible judge (the fake server standing in for a cloud
GPT deployment, which cannot be reached here): good, malformed, out-of-range and failing replies
each end in their own state, only good ones count, and a rerun asks the judge nothing again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_helpers import write_jsonl
from fake_openai import FakeOpenAI, Reply
from slmforge.config.evaluate import EvalConfig
from slmforge.evaluate.runner import run_eval

pytestmark = pytest.mark.integration

# what the judge replies, by the row's question
JUDGE_REPLIES = {
    "good": '{"score": 4, "reason": "Addresses the question."}',
    "fenced": 'Sure.\n```json\n{"score": 2, "reason": "Partly off topic",}\n```',
    "malformed": "The answer is relevant. I would say 4 out of 5.",
    "out-of-range": '{"score": 9, "reason": "Excellent!"}',
    "failing": Reply.failure(400),  # not retried: the judge call ends in an error
}


def _judge_reply(body: dict) -> str | Reply:
    if body["model"] != "judge":
        return f"An answer to {body['messages'][-1]['content']}"
    user = body["messages"][-1]["content"]
    if "ANSWER" not in user and "TEXT:" not in user:
        return "OK"  # the reachability probe
    question = next(
        k for k in JUDGE_REPLIES if f"question {k}." in user or f"question {k}?" in user
    )
    return JUDGE_REPLIES[question]


def _judge_requests(fake: FakeOpenAI) -> list[dict]:
    return [
        r.body
        for r in fake.chat_requests()
        if r.body["model"] == "judge" and r.body["messages"][0]["role"] == "system"
    ]


@pytest.fixture
def data(tmp_path) -> Path:
    rows = [
        {"prompt": f"Please answer question {k}?", "response": f"Reference for {k}."}
        for k in JUDGE_REPLIES
    ]
    rows[0]["context"] = "The context of the good row."
    return write_jsonl(tmp_path / "judged.jsonl", rows)


def test_every_reply_ends_in_its_state_and_reruns_hit_the_cache(data, tmp_path):
    with FakeOpenAI() as fake:
        fake.responder = _judge_reply
        cfg = EvalConfig(
            data=data,
            target=[f"cloud=openai:target@{fake.base_url}"],
            judge=f"openai:judge@{fake.base_url}",
            judge_metrics=["relevance", "groundedness"],
            metrics=["f1"],
            out=tmp_path / "out",
            max_retries=0,
        )
        result = run_eval(cfg)
        first_calls = len(_judge_requests(fake))

        rows = [json.loads(x) for x in (tmp_path / "out" / "rows.jsonl").read_text().splitlines()]
        relevance = [r["targets"]["cloud"]["judge"]["relevance"] for r in rows]
        assert [v["status"] for v in relevance] == [
            "ok",
            "ok",
            "unparsed",
            "out_of_range",
            "error",
        ]
        assert [v.get("score") for v in relevance] == [4.0, 2.0, None, None, None]
        assert relevance[0]["reason"] == "Addresses the question."
        assert relevance[2]["raw"].startswith("The answer is relevant")  # kept, never scored
        assert "HTTP 400" in relevance[4]["reason"]
        grounded = [r["targets"]["cloud"]["judge"]["groundedness"]["status"] for r in rows]
        assert grounded[0] == "ok" and set(grounded[1:]) == {"not_applicable"}

        summary = result.summary["results"]["cloud"]["metrics"]["relevance"]
        assert summary["mean"] == 3.0 and summary["n"] == 2  # only the two ok replies
        assert summary["statuses"] == {"ok": 2, "unparsed": 1, "out_of_range": 1, "error": 1}
        assert first_calls == 5 + 1  # relevance for 5 rows, groundedness for the one with context
        # requests run concurrently, so their order is not fixed
        prompts = [json.dumps(r) for r in _judge_requests(fake)]
        assert all(r["temperature"] == 0 for r in _judge_requests(fake))
        assert sum("RELEVANCE" in p for p in prompts) == 5

        # a rerun over the same output: every reply comes from the cache but the failed one
        rerun = run_eval(cfg.model_copy(update={"force": True}))
        assert len(_judge_requests(fake)) == first_calls + 1
        assert rerun.summary["judge"]["calls"] == 1
        assert rerun.summary["judge"]["cache_hits"] == 5
        assert (tmp_path / "out" / "judge_cache.jsonl").is_file()
