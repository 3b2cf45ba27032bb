"""Every validator rule: each defect gives one exact finding with its line, field and rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_helpers import word_tokenizer, write_jsonl
from slmforge.config.data import ReadOptions, ValidateConfig
from slmforge.data.sample import write_sample
from slmforge.data.validate import DATASET_RULES, run_validate, validate_files
from slmforge.errors import ConfigError, OutputExistsError

GOOD = '{"prompt": "Where to stay in Rome?", "response": "Monti is central."}'
USER = {"role": "user", "content": "Q"}
BOT = {"role": "assistant", "content": "A"}
SYSTEM = {"role": "system", "content": "S"}


def _messages(*messages: dict[str, object]) -> str:
    return json.dumps({"messages": list(messages)})


# (line 2 of the file, the expected field, rule and a piece of the message)
RECORD_DEFECTS = {
    "invalid_json": (
        '{"prompt": "a", "response": "b"',
        None,
        "invalid_json",
        "invalid JSON: Expecting ',' delimiter at column 32",
    ),
    "not_object": ('["a", "b"]', None, "not_object", "expected a JSON object, got a list"),
    "missing_field": (
        '{"prompt": "a"}',
        "response",
        "missing_field",
        "missing 'response' (expected a non-empty string)",
    ),
    "empty_field": (
        '{"prompt": "  ", "response": "b"}',
        "prompt",
        "empty_field",
        "empty (expected a non-empty string)",
    ),
    "wrong_type": (
        '{"prompt": 3, "response": "b"}',
        "prompt",
        "wrong_type",
        "expected a string, got int",
    ),
}
MESSAGE_DEFECTS = {
    "unknown_role": (
        _messages({"role": "robot", "content": "Q"}, BOT),
        "messages[0].role",
        "unknown_role",
        "unknown role 'robot'",
    ),
    "content_type": (
        _messages({"role": "user", "content": ["Q"]}, BOT),
        "messages[0].content",
        "wrong_type",
        "expected a string, got a list",
    ),
    "system_not_first": (
        _messages(USER, SYSTEM, BOT),
        "messages[1].role",
        "role_order",
        "a system message may only come first",
    ),
    "assistant_first": (
        _messages(BOT, USER, BOT),
        "messages[0].role",
        "role_order",
        "expected a user message here, got assistant",
    ),
    "two_users": (
        _messages(USER, USER, BOT),
        "messages[1].role",
        "role_order",
        "expected an assistant message here, got user",
    ),
    "no_assistant": (_messages(SYSTEM, USER), "messages", "no_assistant", "no assistant message"),
    "ends_with_user": (
        _messages(USER, BOT, USER),
        "messages[2]",
        "last_not_assistant",
        "must end with an assistant turn",
    ),
    "empty_messages": (
        '{"messages": []}',
        "messages",
        "missing_field",
        "expected a non-empty list of messages",
    ),
}


@pytest.mark.parametrize("defect", [*RECORD_DEFECTS, *MESSAGE_DEFECTS])
def test_each_record_defect_gives_one_exact_finding(tmp_path: Path, defect: str) -> None:
    bad, field, rule, message = {**RECORD_DEFECTS, **MESSAGE_DEFECTS}[defect]
    good = GOOD if defect in RECORD_DEFECTS else _messages(USER, BOT)
    path = tmp_path / "d.jsonl"
    path.write_text(
        f"{good}\n{bad}\n{good.replace('Q', 'Q2').replace('Rome', 'Oslo')}\n", encoding="utf-8"
    )
    report, examples = validate_files([path], min_examples=0)
    (finding,) = report.findings
    assert (finding.file, finding.line, finding.field, finding.rule, finding.severity) == (
        str(path),
        2,
        field,
        rule,
        "error",
    )
    assert message in finding.message
    assert report.examples == {str(path): 2} and [e.line for e in examples[str(path)]] == [1, 3]


def test_non_utf8_bytes_name_the_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(f"{GOOD}\n".encode() + b'{"prompt": "caf\xe9", "response": "b"}\n')
    (finding,) = validate_files([path], min_examples=0)[0].findings
    assert (finding.line, finding.rule) == (2, "encoding")
    assert finding.message == "not UTF-8 text (byte 0xe9 at column 16)"


def test_non_utf8_csv_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes(b"prompt,response\na,b\nc,\xff\n")
    (finding,) = validate_files([path], min_examples=0)[0].findings
    assert (finding.line, finding.rule) == (3, "encoding")


@pytest.mark.parametrize("content", [b"", b"\n  \n"])
def test_empty_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(content)
    (finding,) = validate_files([path])[0].findings
    assert (finding.line, finding.rule, finding.severity) == (None, "empty_file", "error")


def test_sharegpt_unknown_speaker(tmp_path: Path) -> None:
    turns = [{"from": "human", "value": "Q"}, {"from": "bard", "value": "A"}]
    path = write_jsonl(tmp_path / "s.jsonl", [{"conversations": turns}])
    (finding,) = validate_files([path], min_examples=0)[0].findings
    assert (finding.line, finding.field, finding.rule) == (
        1,
        "conversations[1].from",
        "unknown_role",
    )


def test_role_findings_name_the_field_as_in_the_file(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "m.jsonl", [{"messages": [BOT, USER, BOT]}])
    report = validate_files([path], ReadOptions(system_prompt="S"), min_examples=0)[0]
    assert [f.field for f in report.findings] == ["messages[0].role"]
    turns = [{"from": "human", "value": "Q"}, {"from": "human", "value": "Q"}]
    path = write_jsonl(tmp_path / "s.jsonl", [{"conversations": turns}])
    report = validate_files([path], min_examples=0)[0]
    assert [(f.field, f.rule) for f in report.findings] == [
        ("conversations[1].from", "role_order"),
        ("conversations", "no_assistant"),
    ]


def test_every_bad_line_is_reported_in_one_pass(tmp_path: Path) -> None:
    lines = [GOOD if i % 3 else '{"prompt": ""}' for i in range(30)]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    report = validate_files([path], min_examples=0)[0]
    assert [f.line for f in report.errors if f.field == "prompt"] == list(range(1, 31, 3))


# -- warnings -----------------------------------------------------------------------------
def _warnings(report, rule: str):
    return [f for f in report.warnings if f.rule == rule]


def test_repeated_prompts_with_different_answers_list_the_lines(tmp_path: Path) -> None:
    rows = [
        {"prompt": "Best time for Kyoto?", "response": "Spring."},
        {"prompt": "Other?", "response": "x"},
        {"prompt": "best  time for KYOTO?", "response": "Autumn."},
    ]
    report = validate_files([write_jsonl(tmp_path / "d.jsonl", rows)], min_examples=0)[0]
    (finding,) = report.findings
    assert (finding.line, finding.field, finding.rule, finding.severity) == (
        1,
        "prompt",
        "repeated_prompt",
        "warning",
    )
    assert finding.message.endswith("on lines 1, 3")


def test_identical_pairs(tmp_path: Path) -> None:
    rows = [
        {"prompt": "a", "response": "b"},
        {"prompt": "c", "response": "d"},
        {"prompt": "a", "response": "b"},
    ]
    report = validate_files([write_jsonl(tmp_path / "d.jsonl", rows)], min_examples=0)[0]
    (finding,) = report.findings
    assert (finding.line, finding.rule) == (1, "identical_pair")
    assert finding.message == "identical examples on lines 1, 3"


def test_few_examples(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "response": "b"}])
    (finding,) = validate_files([path], min_examples=5)[0].findings
    assert (finding.line, finding.rule, finding.severity) == (None, "few_examples", "warning")
    assert finding.message == "only 1 examples (fewer than --min-examples 5)"


def test_overlap_between_train_and_validation(tmp_path: Path) -> None:
    train = write_jsonl(
        tmp_path / "train.jsonl",
        [{"prompt": "a", "response": "b"}, {"prompt": "Hi there", "response": "c"}],
    )
    valid = write_jsonl(
        tmp_path / "valid.jsonl",
        [{"prompt": "z", "response": "b"}, {"prompt": "hi  THERE", "response": "d"}],
    )
    (finding,) = validate_files([train, valid], min_examples=0)[0].findings
    assert (finding.file, finding.line, finding.rule) == (str(valid), 2, "split_overlap")
    assert finding.message == f"prompt also in {train} line 2 (overlap between files)"


@pytest.mark.parametrize("template", [True, False])
def test_too_long_counts_tokens_of_the_rendering(tmp_path: Path, template: bool) -> None:
    tokenizer = word_tokenizer(tmp_path / "tok", chat_template=template)
    rows = [
        {"prompt": "one two three", "response": "four"},  # 4 words, 8 tokens templated
        {"prompt": "one two", "response": "three"},
    ]  # 3 words, 7 tokens templated
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    limit = 7 if template else 3
    report = validate_files([path], tokenizer=str(tokenizer), max_seq_len=limit, min_examples=0)[0]
    (finding,) = report.findings
    assert (finding.line, finding.rule) == (1, "too_long")
    assert finding.message.startswith(f"{limit + 1} tokens, longer than --max-seq-len {limit}")


def test_every_dataset_rule_is_registered() -> None:
    assert set(DATASET_RULES) == {
        "identical_pair",
        "repeated_prompt",
        "too_long",
        "few_examples",
        "split_overlap",
    }


def test_sample_data_is_clean(tmp_path: Path) -> None:
    report = validate_files([write_sample(tmp_path / "s.jsonl")])[0]
    assert report.findings == [] and report.ok


# -- run_validate: reports and clean copies -------------------------------------------------
def _bad_file(tmp_path: Path) -> Path:
    path = tmp_path / "d.jsonl"
    path.write_text(f'{GOOD}\nnot json\n{{"prompt": "x", "response": "y"}}\n', encoding="utf-8")
    return path


def test_report_is_written_even_with_errors(tmp_path: Path) -> None:
    path = _bad_file(tmp_path)
    report = run_validate(ValidateConfig(files=[path], report=tmp_path / "r.json", min_examples=0))
    assert not report.ok
    written = json.loads((tmp_path / "r.json").read_text())
    assert written["ok"] is False
    assert written["files"] == {str(path): {"examples": 2, "errors": 1, "warnings": 0}}
    assert written["findings"][0]["line"] == 2 and written["findings"][0]["rule"] == "invalid_json"


def test_drop_invalid_writes_a_clean_copy(tmp_path: Path) -> None:
    path = _bad_file(tmp_path)
    report = run_validate(
        ValidateConfig(
            files=[path],
            drop_invalid=True,
            out=tmp_path / "c.jsonl",
            output_format="prompt_response",
            min_examples=0,
        )
    )
    assert report.dropped_lines == [2]
    kept = [json.loads(line) for line in (tmp_path / "c.jsonl").read_text().splitlines()]
    assert kept == [json.loads(GOOD), {"prompt": "x", "response": "y"}]


@pytest.mark.parametrize("options", [{"drop_invalid": True}, {"out": "c.jsonl"}])
def test_drop_invalid_and_out_go_together(tmp_path: Path, options) -> None:
    with pytest.raises(ConfigError):
        run_validate(ValidateConfig(files=[_bad_file(tmp_path)], **options))


def test_existing_report_fails_before_reading(tmp_path: Path) -> None:
    (tmp_path / "r.json").write_text("{}")
    with pytest.raises(OutputExistsError):
        run_validate(ValidateConfig(files=[tmp_path / "missing.jsonl"], report=tmp_path / "r.json"))


def test_read_options_reach_the_reader(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"q": "a", "a": "b"}])
    report = validate_files(
        [path], ReadOptions(prompt_field="q", response_field="a"), min_examples=0
    )[0]
    assert report.ok and report.examples == {str(path): 1}
