"""Readers, writers and conversion of every supported data format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_helpers import write_jsonl
from slmforge.config.data import ConvertConfig, ReadOptions
from slmforge.data.formats import Example, read_examples, read_with_findings
from slmforge.data.writing import run_convert, write_examples
from slmforge.errors import ConfigError, DataError, InputError, OutputExistsError

PAIRS = [
    {"prompt": "What's a must-see in Lisbon?", "response": "The Alfama at sunset."},
    {"prompt": "Best time for Kyoto?", "response": "Spring or autumn."},
]
SINGLE = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]


def _messages(examples: list[Example]) -> list[list[dict[str, str]]]:
    return [e.messages for e in examples]


def _only(findings):
    assert len(findings) == 1, findings
    return findings[0]


# -- readers ------------------------------------------------------------------------------
def test_prompt_response_jsonl(tmp_path: Path) -> None:
    examples = read_examples(write_jsonl(tmp_path / "d.jsonl", PAIRS))
    assert [e.line for e in examples] == [1, 2]
    assert examples[0].source == str(tmp_path / "d.jsonl")
    assert examples[0].messages == [
        {"role": "user", "content": PAIRS[0]["prompt"]},
        {"role": "assistant", "content": PAIRS[0]["response"]},
    ]


def test_system_prompt_is_added_only_where_missing(tmp_path: Path) -> None:
    rows = [
        {"messages": SINGLE},
        {"messages": [{"role": "system", "content": "Be brief."}, *SINGLE]},
    ]
    examples = read_examples(
        write_jsonl(tmp_path / "m.jsonl", rows), ReadOptions(system_prompt="You help travelers.")
    )
    assert [e.system for e in examples] == ["You help travelers.", "Be brief."]


def test_messages_multi_turn_and_extra_keys_ignored(tmp_path: Path) -> None:
    convo = [
        {"role": "system", "content": "S"},
        *SINGLE,
        {"role": "user", "content": "More?"},
        {"role": "assistant", "content": "Sure.", "weight": 1},
    ]
    (example,) = read_examples(write_jsonl(tmp_path / "m.jsonl", [{"messages": convo, "id": 7}]))
    assert [m["role"] for m in example.messages] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
    ]
    assert example.messages[-1] == {"role": "assistant", "content": "Sure."}
    assert not example.is_single_turn()


def test_alpaca_input_follows_instruction_after_blank_line(tmp_path: Path) -> None:
    rows = [
        {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
        {"instruction": "Name a city in Peru.", "input": "", "output": "Cusco"},
    ]
    examples = read_examples(write_jsonl(tmp_path / "a.jsonl", rows))
    assert [e.prompt for e in examples] == [
        "Translate to French.\n\nGood morning",
        "Name a city in Peru.",
    ]
    assert examples[1].response == "Cusco"


def test_sharegpt_roles_are_mapped(tmp_path: Path) -> None:
    turns = [
        {"from": "system", "value": "S"},
        {"from": "human", "value": "Q"},
        {"from": "gpt", "value": "A"},
    ]
    (example,) = read_examples(write_jsonl(tmp_path / "s.jsonl", [{"conversations": turns}]))
    assert example.messages == [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "A"},
    ]


def test_csv_with_mapped_columns_and_row_lines(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text(
        'question,answer\nWhere to eat?,"Try tapas,\nthen churros."\nHi?,Hello\n', encoding="utf-8"
    )
    examples = read_examples(path, ReadOptions(prompt_field="question", response_field="answer"))
    assert [(e.prompt, e.response) for e in examples] == [
        ("Where to eat?", "Try tapas,\nthen churros."),
        ("Hi?", "Hello"),
    ]
    assert [e.line for e in examples] == [3, 4]  # the line where each row ends


def test_csv_missing_column_is_one_finding(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("prompt,answer\na,b\nc,d\n", encoding="utf-8")
    finding = _only(read_with_findings(path)[1])
    assert (finding.field, finding.rule) == ("response", "missing_field")
    assert "columns: prompt, answer" in finding.message


def test_parquet(tmp_path: Path) -> None:
    import pandas as pd

    path = tmp_path / "d.parquet"
    pd.DataFrame(PAIRS).to_parquet(path)
    examples = read_examples(path)
    assert [(e.prompt, e.response, e.line) for e in examples] == [
        (p["prompt"], p["response"], i) for i, p in enumerate(PAIRS, start=1)
    ]


def test_parquet_with_messages_column(tmp_path: Path) -> None:
    import pandas as pd

    path = tmp_path / "m.parquet"
    pd.DataFrame([{"messages": SINGLE}]).to_parquet(path)
    assert _messages(read_examples(path)) == [SINGLE]


def test_hf_dataset_folder(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    rows = [{"q": p["prompt"], "a": p["response"]} for p in PAIRS]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(tmp_path / "ds")
    examples = read_examples(tmp_path / "ds", ReadOptions(prompt_field="q", response_field="a"))
    assert [(e.prompt, e.response) for e in examples] == [
        (p["prompt"], p["response"]) for p in PAIRS
    ]


def test_hf_dataset_without_datasets_is_a_missing_dependency(tmp_path, monkeypatch) -> None:
    import sys

    from slmforge.errors import MissingDependencyError

    (tmp_path / "ds").mkdir()
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(MissingDependencyError, match=r"slmforge\[train\]"):
        read_examples(tmp_path / "ds")


def test_input_format_overrides_detection(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "response": "r"}])
    finding = _only(read_with_findings(path, ReadOptions(input_format="messages"))[1])
    assert (finding.line, finding.field, finding.rule) == (1, "messages", "missing_field")


def test_unknown_keys_name_the_expected_formats(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "q", "answer": "a"}])
    finding = _only(read_with_findings(path)[1])
    assert finding.rule == "unknown_format"
    assert "(answer, question)" in finding.message and "--prompt-field" in finding.message


def test_missing_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="file not found"):
        read_examples(tmp_path / "nope.jsonl")


def test_bom_and_crlf_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(
        b"\xef\xbb\xbf"
        + json.dumps(PAIRS[0]).encode()
        + b"\r\n\r\n"
        + json.dumps(PAIRS[1]).encode()
        + b"\r\n"
    )
    assert [e.line for e in read_examples(path)] == [1, 3]


def test_read_examples_raises_with_every_bad_record(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(
        '{"prompt": "a", "response": "b"}\n{"prompt": "a"\n{"prompt": "", "response": "b"}\n',
        encoding="utf-8",
    )
    with pytest.raises(DataError) as info:
        read_examples(path)
    assert [(f.line, f.rule) for f in info.value.findings] == [
        (2, "invalid_json"),
        (3, "empty_field"),
    ]
    assert str(info.value).startswith(f"{path}:2: invalid JSON")
    assert "(and 1 more errors)" in str(info.value)


# -- writers ------------------------------------------------------------------------------
def test_round_trip_prompt_response_messages_prompt_response(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "pr.jsonl", PAIRS)
    run_convert(
        ConvertConfig(input=source, out=tmp_path / "m.jsonl", system_prompt="You help travelers.")
    )
    messages = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert messages[0]["messages"][0] == {"role": "system", "content": "You help travelers."}
    run_convert(
        ConvertConfig(
            input=tmp_path / "m.jsonl", out=tmp_path / "back.jsonl", output_format="prompt_response"
        )
    )
    back = [json.loads(line) for line in (tmp_path / "back.jsonl").read_text().splitlines()]
    assert back == PAIRS


def test_prompt_response_refuses_multi_turn_naming_the_line(tmp_path: Path) -> None:
    multi = Example(
        [*SINGLE, {"role": "user", "content": "And?"}, {"role": "assistant", "content": "Done."}],
        line=4,
        source="c.jsonl",
    )
    with pytest.raises(DataError) as info:
        write_examples(
            [Example(SINGLE, 1, "c.jsonl"), multi], tmp_path / "o.jsonl", "prompt_response"
        )
    finding = _only(info.value.findings)
    assert (finding.file, finding.line) == ("c.jsonl", 4)
    assert "4 turns" in finding.message
    assert not (tmp_path / "o.jsonl").exists()


def test_text_output_with_template(tmp_path: Path) -> None:
    out = write_examples(
        [Example(SINGLE)],
        tmp_path / "t.jsonl",
        "text",
        text_template=r"<|user|>\n{prompt}<|end|>\n<|assistant|>\n{response}",
    )
    assert json.loads(out.read_text()) == {"text": "<|user|>\nHi<|end|>\n<|assistant|>\nHello!"}


def test_text_template_implies_text_output(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "pr.jsonl", PAIRS[:1])
    run_convert(
        ConvertConfig(
            input=source, out=tmp_path / "t.jsonl", text_template="Q: {prompt} A: {response}"
        )
    )
    text = json.loads((tmp_path / "t.jsonl").read_text())["text"]
    assert text == f"Q: {PAIRS[0]['prompt']} A: {PAIRS[0]['response']}"


def test_text_template_conflicts_with_another_output_format(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "pr.jsonl", PAIRS)
    with pytest.raises(ConfigError, match="--text-template"):
        run_convert(
            ConvertConfig(
                input=source,
                out=tmp_path / "o.jsonl",
                output_format="prompt_response",
                text_template="{prompt}",
            )
        )


def test_write_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    out = tmp_path / "o.jsonl"
    out.write_text("keep\n")
    with pytest.raises(OutputExistsError):
        write_examples([Example(SINGLE)], out)
    assert out.read_text() == "keep\n"
    write_examples([Example(SINGLE)], out, force=True)
    assert json.loads(out.read_text()) == {"messages": SINGLE}


def test_convert_checks_the_output_before_reading(tmp_path: Path) -> None:
    out = tmp_path / "o.jsonl"
    out.write_text("keep\n")
    with pytest.raises(OutputExistsError):
        run_convert(ConvertConfig(input=tmp_path / "missing.jsonl", out=out))
