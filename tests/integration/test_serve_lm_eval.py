"""lm-eval against `slmforge serve`: loglikelihood through `local-completions` (scores equal to a
direct PyTorch computation) and generation through `local-chat-completions`.

The tasks are written here as local JSON files, so nothing is downloaded.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from slmforge.config.serve import ServeConfig
from slmforge.serve.server import RunningServer, start_in_thread

pytestmark = pytest.mark.integration

DOCS = [
    {"question": "The capital of Portugal is", "choices": ["Lisbon", "a banana"], "answer": 0},
    {"question": "To stay dry in the rain, take an", "choices": ["umbrella", "oven"], "answer": 0},
    {"question": "Trains run on", "choices": ["clouds", "rails"], "answer": 1},
    {"question": "A passport is a", "choices": ["document", "fish"], "answer": 0},
]


@pytest.fixture(scope="module")
def server(tiny_llama) -> Iterator[RunningServer]:
    running = start_in_thread(ServeConfig(model=str(tiny_llama), port=0))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def tasks(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lm-eval-tasks")
    data = root / "travel.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS), encoding="utf-8")
    common = (
        f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\ndoc_to_text: '{{question}}'\n"
    )
    (root / "mc.yaml").write_text(
        "task: slmforge_travel_mc\n" + common + "output_type: multiple_choice\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: answer\n"
        "metric_list:\n  - metric: acc\n",
        encoding="utf-8",
    )
    (root / "gen.yaml").write_text(
        "task: slmforge_travel_gen\n" + common + "output_type: generate_until\n"
        "doc_to_target: '{{choices[answer]}}'\n"
        "generation_kwargs:\n  until: ['\\n']\n  max_gen_toks: 8\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n",
        encoding="utf-8",
    )
    return root


def _evaluate(model: str, model_args: str, task: str, tasks: Path, **options):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    return simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=[task],
        task_manager=TaskManager(include_path=str(tasks)),
        log_samples=True,
        **options,
    )


def _expected_choice_logprobs(model_dir: Path, doc: dict) -> list[float]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    context = tokenizer(doc["question"], add_special_tokens=False)["input_ids"]
    sums = []
    for choice in doc["choices"]:
        # lm-eval's target delimiter is one space between the context and the choice
        text = doc["question"] + " " + choice
        whole = tokenizer(text, add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            logprobs = torch.log_softmax(model(torch.tensor([whole])).logits[0].float(), -1)
        sums.append(sum(float(logprobs[i - 1, whole[i]]) for i in range(len(context), len(whole))))
    return sums


def test_loglikelihood_through_local_completions(server, tasks, tiny_llama, monkeypatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    args = f"model=llama,base_url={server.url}/v1/completions,num_concurrent=1,max_retries=1"
    results = _evaluate("local-completions", args, "slmforge_travel_mc", tasks)
    acc = results["results"]["slmforge_travel_mc"]["acc,none"]
    samples = results["samples"]["slmforge_travel_mc"]
    assert len(samples) == len(DOCS)
    expected_hits = 0
    for sample in samples:
        doc = sample["doc"]
        got = [resp[0][0] for resp in sample["resps"]]
        expected = _expected_choice_logprobs(tiny_llama, doc)
        assert got == pytest.approx(expected, abs=1e-3), doc["question"]
        expected_hits += int(max(range(len(expected)), key=expected.__getitem__) == doc["answer"])
    assert acc == pytest.approx(expected_hits / len(DOCS))


def test_generation_through_local_chat_completions(server, tasks, monkeypatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    args = f"model=llama,base_url={server.url}/v1/chat/completions,num_concurrent=1,max_retries=1"
    results = _evaluate(
        "local-chat-completions", args, "slmforge_travel_gen", tasks, apply_chat_template=True
    )
    samples = results["samples"]["slmforge_travel_gen"]
    assert len(samples) == len(DOCS)
    assert all(isinstance(s["resps"][0][0], str) for s in samples)
    assert 0.0 <= results["results"]["slmforge_travel_gen"]["exact_match,none"] <= 1.0
    # the model's own answers came back: one non-empty reply per question
    assert sum(bool(s["resps"][0][0].strip()) for s in samples) >= 1
