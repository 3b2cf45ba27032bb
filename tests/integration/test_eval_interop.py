"""The interop recipes of docs/eval.md, run as written: azure-ai-evaluation's judge evaluators and
lm-eval's `local-chat-completions` pointed at an OpenAI-compatible endpoint. The fake server
stands in for the endpoint (a slmforge deployment or a cloud judge): the point is that both
tools work offline against such a URL, with the options the docs give."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fake_openai import FakeOpenAI
from slmforge.data.sample import write_sample

pytestmark = pytest.mark.integration


def test_azure_ai_evaluation_relevance_with_an_openai_compatible_judge():
    evaluation = pytest.importorskip("azure.ai.evaluation")
    with FakeOpenAI() as fake:
        fake.responder = lambda body: json.dumps(
            {"reason": "The response answers the question directly.", "score": 4}
        )
        model_config = evaluation.OpenAIModelConfiguration(
            type="openai", base_url=fake.base_url, api_key="none", model="judge"
        )
        relevance = evaluation.RelevanceEvaluator(model_config=model_config)
        result = relevance(
            query="What should I eat in Lisbon?", response="Try a pastel de nata in Belem."
        )
        request = fake.chat_requests()[-1].body
    assert result["relevance"] == 4.0 and result["relevance_result"] == "pass"
    assert request["model"] == "judge"
    assert "pastel de nata" in json.dumps(request["messages"])


def test_lm_eval_local_chat_completions_on_a_custom_task(tmp_path: Path, monkeypatch):
    pytest.importorskip("tenacity")  # lm-eval's API models need lm-eval[api]
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rows = [json.loads(x) for x in write_sample(tmp_path / "travel.jsonl").read_text().splitlines()]
    data = tmp_path / "held_out.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows[:6]), encoding="utf-8")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "travel_qa.yaml").write_text(
        "\n".join(
            [
                "task: travel_qa",
                "dataset_path: json",
                f"dataset_kwargs: {{data_files: {{test: '{data}'}}}}",
                "test_split: test",
                "output_type: generate_until",
                'doc_to_text: "{{prompt}}"',
                'doc_to_target: "{{response}}"',
                "generation_kwargs: {until: [], max_gen_toks: 64, do_sample: false}",
                "metric_list:",
                "  - {metric: exact_match, aggregation: mean, higher_is_better: true,",
                "     ignore_case: true, ignore_punctuation: true}",
            ]
        ),
        encoding="utf-8",
    )
    answers = {r["prompt"]: r["response"] for r in rows[:6]}
    with FakeOpenAI() as fake:
        # right for the first four prompts, wrong for the last two
        wrong = set(list(answers)[4:])
        fake.responder = lambda body: (
            "I am not sure."
            if body["messages"][-1]["content"] in wrong
            else answers[body["messages"][-1]["content"]]
        )
        results = simple_evaluate(
            model="local-chat-completions",
            model_args={
                "model": "travel",
                "base_url": f"{fake.base_url}/chat/completions",
                "num_concurrent": 1,
                "max_retries": 1,
            },
            tasks=["travel_qa"],
            task_manager=TaskManager(include_path=str(tasks), include_defaults=False),
            apply_chat_template=True,
        )
        requests = fake.chat_requests()
    assert results["results"]["travel_qa"]["exact_match,none"] == pytest.approx(4 / 6)
    assert len(requests) == 6 and requests[0].body["model"] == "travel"
