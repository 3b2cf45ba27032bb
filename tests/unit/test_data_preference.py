"""Preference pairs: reading OpenAI DPO and TRL rows, findings, shape checks, room for the
answers, the offline sample, writers and `data convert`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_helpers import word_tokenizer, write_jsonl
from slmforge.config.data import ConvertConfig, ReadOptions
from slmforge.data.formats import read_with_findings
from slmforge.data.preference import (
    PreferenceExample,
    is_preference_file,
    prompt_room_findings,
    read_preference_examples,
    read_preference_with_findings,
    shape_mismatch,
)
from slmforge.data.preference_write import write_pairs
from slmforge.data.sample import sample_pairs
from slmforge.data.sample_preference import NON_PREFERRED_POOL, preference_rows
from slmforge.data.writing import run_convert
from slmforge.errors import ConfigError, DataError, OutputExistsError

USER = {"role": "user", "content": "What should I eat in Porto?"}
GOOD = {"role": "assistant", "content": "Try a francesinha."}
BAD = {"role": "assistant", "content": "Paris is in France."}


def dpo(prompt=None, chosen=None, rejected=None, **extra) -> dict:
    row = {
        "input": {"messages": prompt or [USER]},
        "preferred_output": chosen or [GOOD],
        "non_preferred_output": rejected or [BAD],
    }
    return {**row, **extra}


def found(findings) -> list[tuple[int | None, str | None, str]]:
    return [(f.line, f.field, f.rule) for f in findings]


# -- reading ----------------------------------------------------------------------------------
def test_openai_dpo_rows(tmp_path: Path) -> None:
    system = {"role": "system", "content": "Be brief."}
    path = write_jsonl(tmp_path / "p.jsonl", [dpo(), dpo(prompt=[system, USER], meta={"k": 1})])
    pairs = read_preference_examples(path)
    assert [p.line for p in pairs] == [1, 2]
    assert pairs[0].prompt == [USER] and pairs[0].chosen == [GOOD] and pairs[0].rejected == [BAD]
    assert pairs[0].chosen_messages == [USER, GOOD]
    assert pairs[1].system == "Be brief." and pairs[1].meta == {"k": 1}
    assert pairs[0].record_format == "openai_dpo" and pairs[0].source == str(path)


def test_trl_text_conversational_and_implicit_prompt(tmp_path: Path) -> None:
    rows = [
        {"prompt": USER["content"], "chosen": GOOD["content"], "rejected": BAD["content"]},
        {"prompt": [USER], "chosen": [GOOD], "rejected": [BAD]},
        {"chosen": [USER, GOOD], "rejected": [USER, BAD]},
        # multi-turn: the shared start up to the last user turn is the prompt
        {
            "chosen": [USER, GOOD, {"role": "user", "content": "And drink?"}, GOOD],
            "rejected": [USER, GOOD, {"role": "user", "content": "And drink?"}, BAD],
        },
    ]
    pairs = read_preference_examples(write_jsonl(tmp_path / "t.jsonl", rows))
    assert [p.prompt for p in pairs[:3]] == [[USER]] * 3
    assert all(p.chosen == [GOOD] and p.rejected == [BAD] for p in pairs)
    assert len(pairs[3].prompt) == 3 and pairs[3].prompt[-1]["content"] == "And drink?"
    assert {p.record_format for p in pairs} == {"trl"}


def test_every_invalid_record_is_a_finding_with_line_and_field(tmp_path: Path) -> None:
    assistant_prompt = [USER, {"role": "assistant", "content": "Hmm."}]
    rows = [
        dpo(),  # 1: fine
        {"input": {"messages": [USER]}, "preferred_output": [GOOD]},  # 2: missing side
        dpo(rejected=[{"role": "assistant", "content": "  "}]),  # 3: empty answer
        dpo(rejected=[dict(GOOD)]),  # 4: identical answers
        dpo(prompt=assistant_prompt),  # 5: prompt ends with an assistant turn
        dpo(chosen=[{"role": "user", "content": "x"}]),  # 6: answer not from the assistant
        dpo(prompt=[{"role": "robot", "content": "x"}]),  # 7: unknown role
        dpo(chosen="Try a francesinha."),  # 8: wrong type
        "not an object",  # 9
        {"input": "hi", "preferred_output": [GOOD], "non_preferred_output": [BAD]},  # 10
    ]
    pairs, findings = read_preference_with_findings(write_jsonl(tmp_path / "p.jsonl", rows))
    assert [p.line for p in pairs] == [1]
    assert found(findings) == [
        (2, "non_preferred_output", "missing_side"),
        (3, "non_preferred_output[0].content", "empty_field"),
        (4, "non_preferred_output", "identical_answers"),
        (5, "input.messages[1].role", "prompt_end"),
        (6, "preferred_output[0].role", "answer_role"),
        (7, "input.messages[0].role", "unknown_role"),
        (8, "preferred_output", "wrong_type"),
        (9, None, "not_object"),
        (10, "input", "wrong_type"),
    ]
    messages = {f.line: f.message for f in findings}
    assert messages[4] == "chosen and rejected are identical"
    assert "must end with a user or tool message" in messages[5]
    assert "missing 'non_preferred_output'" in messages[2]
    with pytest.raises(DataError, match=r"p\.jsonl:2 \[non_preferred_output\]: missing") as err:
        read_preference_examples(tmp_path / "p.jsonl")
    assert len(err.value.findings) == 9


def test_trl_findings_name_the_file_fields(tmp_path: Path) -> None:
    rows = [
        {"prompt": "Hi?", "chosen": "Hello!"},  # 1
        {"prompt": "Hi?", "chosen": "", "rejected": "No."},  # 2
        {"prompt": "Hi?", "chosen": "Same.", "rejected": " Same. "},  # 3: identical
        {"chosen": [USER, GOOD], "rejected": [{"role": "user", "content": "Other?"}, BAD]},  # 4
        {"prompt": [USER], "chosen": [GOOD, GOOD], "rejected": [BAD]},  # 5: two answers in a row
    ]
    _, findings = read_preference_with_findings(write_jsonl(tmp_path / "t.jsonl", rows))
    assert found(findings) == [
        (1, "rejected", "missing_side"),
        (2, "chosen", "empty_field"),
        (3, "rejected", "identical_answers"),
        (4, "rejected", "no_shared_prompt"),
        (5, "chosen[1].role", "role_order"),
    ]


def test_tool_calls_in_answers_are_checked_against_declared_tools(tmp_path: Path) -> None:
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {}}}]
    call = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"type": "function", "function": {"name": "forecast", "arguments": "{}"}},
        ],
    }
    row = dpo(rejected=[call])
    row["input"]["tools"] = tools
    _, findings = read_preference_with_findings(write_jsonl(tmp_path / "p.jsonl", [row]))
    assert [f.field for f in findings] == ["non_preferred_output[0].tool_calls[0].function.name"]


def test_system_prompt_option_is_added_to_the_prompt(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [dpo()])
    pair = read_preference_examples(path, ReadOptions(system_prompt="You help."))[0]
    assert pair.prompt[0] == {"role": "system", "content": "You help."}
    assert pair.chosen == [GOOD]


def test_csv_text_pairs_and_missing_column(tmp_path: Path) -> None:
    good = tmp_path / "p.csv"
    good.write_text("prompt,chosen,rejected\nHi?,Hello!,Go away.\n", encoding="utf-8")
    pair = read_preference_examples(good)[0]
    assert pair.prompt == [{"role": "user", "content": "Hi?"}] and pair.line == 2
    bad = tmp_path / "q.csv"
    bad.write_text("prompt,chosen\nHi?,Hello!\n", encoding="utf-8")
    _, findings = read_preference_with_findings(bad)
    assert found(findings) == [(None, "rejected", "missing_side")]


# -- what kind of file ------------------------------------------------------------------------
def test_is_preference_file_and_shape_mismatch(tmp_path: Path) -> None:
    pairs = write_jsonl(tmp_path / "p.jsonl", [dpo()])
    trl = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"}])
    examples = write_jsonl(tmp_path / "e.jsonl", [{"messages": [USER, GOOD]}])
    assert is_preference_file(pairs) and is_preference_file(trl)
    assert not is_preference_file(examples)
    assert shape_mismatch(pairs, "pairs") is None and shape_mismatch(examples, "examples") is None
    wrong = shape_mismatch(pairs, "examples")
    assert wrong is not None and (wrong.line, wrong.rule) == (1, "wrong_shape")
    assert "preference row (input/preferred_output/non_preferred_output)" in wrong.message
    assert "supervised fine-tuning" in wrong.message
    reverse = shape_mismatch(examples, "pairs")
    assert reverse is not None and reverse.line == 1
    assert "supervised row (messages)" in reverse.message


def test_shape_mismatch_names_the_first_wrong_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "m.jsonl", [dpo(), dpo(), {"prompt": "a", "response": "b"}])
    wrong = shape_mismatch(path, "pairs")
    assert wrong is not None and wrong.line == 3 and "prompt_response" in wrong.message


def test_supervised_reader_refuses_a_pair_file_in_one_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [dpo(), dpo()])
    examples, findings = read_with_findings(path)
    assert examples == []
    assert found(findings) == [(1, None, "wrong_shape")]
    assert "--objective dpo" in findings[0].message
    trl = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"}])
    assert found(read_with_findings(trl)[1]) == [(1, None, "wrong_shape")]
    _, reverse = read_preference_with_findings(
        write_jsonl(tmp_path / "e.jsonl", [{"messages": [USER, GOOD]}])
    )
    assert found(reverse) == [(1, None, "wrong_shape")]


# -- room for the answers ---------------------------------------------------------------------
def test_prompt_room_findings_name_line_field_and_tokens(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(word_tokenizer(tmp_path / "tok"))
    long_prompt = {"role": "user", "content": " ".join(["word"] * 20)}
    rows = [dpo(), dpo(prompt=[long_prompt])]
    pairs = read_preference_examples(write_jsonl(tmp_path / "p.jsonl", rows))
    # "<|user|> w x 20 <|end|>" is 22 tokens; the short prompt is 8
    findings = prompt_room_findings(pairs, tokenizer, max_seq_len=22)
    assert found(findings) == [(2, "input.messages", "no_answer_room")]
    assert "22 tokens, leaving 0 of --max-seq-len 22" in findings[0].message
    assert prompt_room_findings(pairs, tokenizer, max_seq_len=23) == []
    assert len(prompt_room_findings(pairs, tokenizer, 23, min_answer_tokens=2)) == 1
    trl = [PreferenceExample([long_prompt], [GOOD], [BAD], 7, "t.jsonl", record_format="trl")]
    assert found(prompt_room_findings(trl, tokenizer, 10)) == [(7, "prompt", "no_answer_room")]


# -- the offline sample -----------------------------------------------------------------------
def test_preference_sample_prefers_the_reference_answer(tmp_path: Path) -> None:
    references = {p["prompt"]: p["response"] for p in sample_pairs()}
    rows = preference_rows(seed=3)
    assert len(rows) == len(references) - NON_PREFERRED_POOL
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    pairs = read_preference_examples(path)
    for pair in pairs:
        prompt = pair.prompt[0]["content"]
        assert pair.chosen[0]["content"] == references[prompt]
        assert pair.rejected[0]["content"] != references[prompt]
        assert pair.rejected[0]["content"] in references.values()
    # the non-preferred answers come from a few set-aside rows that are never preferred
    rejected = {pair.rejected[0]["content"] for pair in pairs}
    assert 1 < len(rejected) <= NON_PREFERRED_POOL
    assert not rejected & {pair.chosen[0]["content"] for pair in pairs}
    assert preference_rows(seed=3) == rows and preference_rows(seed=4) != rows
    assert len(preference_rows(count=450)) == 450


# -- writing and convert ----------------------------------------------------------------------
def test_convert_round_trips_between_pair_formats(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "p.jsonl", [dpo(meta={"group": "g"})])
    trl, text, back = tmp_path / "trl.jsonl", tmp_path / "text.jsonl", tmp_path / "back.jsonl"
    run_convert(ConvertConfig(input=source, out=trl, output_format="trl"))
    assert json.loads(trl.read_text()) == {
        "prompt": [USER],
        "chosen": [GOOD],
        "rejected": [BAD],
        "meta": {"group": "g"},
    }
    run_convert(ConvertConfig(input=trl, out=text, output_format="trl_text"))
    assert text.read_text() == (
        '{"prompt": "What should I eat in Porto?", "chosen": "Try a francesinha.", '
        '"rejected": "Paris is in France.", "meta": {"group": "g"}}\n'
    )
    path, count = run_convert(ConvertConfig(input=text, out=back))  # openai_dpo by default
    assert (path, count) == (back, 1)
    assert back.read_bytes() == source.read_bytes()


def test_trl_text_refuses_multi_turn_and_tools(tmp_path: Path) -> None:
    turns = [USER, GOOD, {"role": "user", "content": "And?"}]
    source = write_jsonl(tmp_path / "p.jsonl", [dpo(), dpo(prompt=turns)])
    with pytest.raises(DataError, match=r"p\.jsonl:2 \[input\.messages\]: has a 3-message"):
        run_convert(ConvertConfig(input=source, out=tmp_path / "o.jsonl", output_format="trl_text"))
    assert not (tmp_path / "o.jsonl").exists()


def test_convert_refuses_crossing_shapes_and_existing_output(tmp_path: Path) -> None:
    pairs = write_jsonl(tmp_path / "p.jsonl", [dpo()])
    examples = write_jsonl(tmp_path / "e.jsonl", [{"messages": [USER, GOOD]}])
    out = tmp_path / "o.jsonl"
    with pytest.raises(ConfigError, match="--output-format messages writes supervised"):
        run_convert(ConvertConfig(input=pairs, out=out, output_format="messages"))
    with pytest.raises(ConfigError, match="--output-format trl writes preference pairs"):
        run_convert(ConvertConfig(input=examples, out=out, output_format="trl"))
    out.write_text("keep\n")
    with pytest.raises(OutputExistsError):
        run_convert(ConvertConfig(input=pairs, out=out, output_format="trl"))
    assert out.read_text() == "keep\n"
    run_convert(ConvertConfig(input=pairs, out=out, output_format="trl", force=True))
    assert json.loads(out.read_text())["chosen"] == [GOOD]


def test_write_pairs_keeps_tools_and_null_content_of_calls(tmp_path: Path) -> None:
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {}}}]
    call = {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
        ],
    }
    pair = PreferenceExample([USER], [call], [BAD], 1, "x", tools)
    row = json.loads(write_pairs([pair], tmp_path / "o.jsonl").read_text())
    assert row["input"] == {"messages": [USER], "tools": tools}
    assert row["preferred_output"][0]["content"] is None
    with pytest.raises(DataError, match="tool definitions or calls"):
        write_pairs([pair], tmp_path / "t.jsonl", "trl_text")


# -- validate, split, stats -------------------------------------------------------------------
def test_validate_pairs_reports_findings_and_drops_invalid(tmp_path: Path) -> None:
    from slmforge.config.data import ValidateConfig
    from slmforge.data.validate import run_validate

    tok = word_tokenizer(tmp_path / "tok")
    long_prompt = {"role": "user", "content": " ".join(["word"] * 30)}
    rows = [
        dpo(),
        dpo(rejected=[dict(GOOD)]),  # 2: identical answers
        dpo(prompt=[long_prompt]),  # 3: no room for an answer in 16 tokens
        dpo(),  # 4: the same pair as line 1
    ]
    source = write_jsonl(tmp_path / "p.jsonl", rows)
    config = ValidateConfig(
        files=[source],
        tokenizer=str(tok),
        max_seq_len=16,
        drop_invalid=True,
        out=tmp_path / "clean.jsonl",
        output_format="trl",
    )
    report = run_validate(config)
    assert report.noun == "pairs"
    assert [(f.line, f.field, f.rule, f.severity) for f in report.findings] == [
        (None, None, "few_examples", "warning"),
        (1, None, "identical_pair", "warning"),
        (2, "non_preferred_output", "identical_answers", "error"),
        (3, "input.messages", "no_answer_room", "error"),
    ]
    assert "only 3 pairs" in report.findings[0].message
    assert report.dropped_lines == [2, 3]
    clean = [json.loads(line) for line in (tmp_path / "clean.jsonl").read_text().splitlines()]
    assert clean == [{"prompt": [USER], "chosen": [GOOD], "rejected": [BAD]}] * 2


def test_validate_warns_when_a_side_would_be_truncated(tmp_path: Path) -> None:
    from slmforge.data.validate import validate_files

    long_answer = {"role": "assistant", "content": " ".join(["word"] * 12)}
    source = write_jsonl(tmp_path / "p.jsonl", [dpo(rejected=[long_answer])])
    report, _ = validate_files(
        [source], tokenizer=str(word_tokenizer(tmp_path / "t")), max_seq_len=16
    )
    too_long = [f for f in report.findings if f.rule == "too_long"]
    assert [(f.line, f.field, f.severity) for f in too_long] == [
        (1, "non_preferred_output", "warning")
    ]
    # "<|user|> 6 words <|end|>" + "<|assistant|> 12 words <|end|>"
    assert "prompt + rejected is 22 tokens" in too_long[0].message


def test_split_keeps_pairs_of_one_prompt_together(tmp_path: Path) -> None:
    from slmforge.config.data import SplitConfig
    from slmforge.data.split import run_split

    per_prompt = len(preference_rows())
    rows = preference_rows(count=3 * per_prompt, seed=1)  # every prompt three times
    source = write_jsonl(tmp_path / "p.jsonl", rows)
    written = run_split(SplitConfig(input=source, out_dir=tmp_path / "split", validation=0.2))
    parts = {name: read_preference_examples(path) for name, path in written.items()}
    prompts = {name: {p.prompt_key() for p in pairs} for name, pairs in parts.items()}
    assert prompts["train"] and prompts["validation"]
    assert not prompts["train"] & prompts["validation"]
    assert sum(len(p) for p in parts.values()) == 3 * per_prompt
    assert all(len(pairs) % 3 == 0 for pairs in parts.values())
    first = json.loads(written["train"].read_text().splitlines()[0])
    assert set(first) == {"input", "preferred_output", "non_preferred_output"}


def test_pair_stats(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from slmforge.data.stats import compute_pair_stats

    short = {"role": "assistant", "content": "No."}
    third = dpo(
        prompt=[{"role": "user", "content": "Hi there?"}],
        chosen=[{"role": "assistant", "content": "A B"}],
        rejected=[{"role": "assistant", "content": "C"}],
    )
    rows = [dpo(rejected=[short]), dpo(), third]
    pairs = read_preference_examples(write_jsonl(tmp_path / "p.jsonl", rows))
    stats = compute_pair_stats(pairs)
    assert stats.pairs == 3 and stats.repeated_prompts == 1
    assert stats.repeated_prompt_share == round(1 / 3, 4)
    assert stats.characters["chosen"].max == len(GOOD["content"])
    expected = (18 / 3 + 18 / 19 + 3 / 1) / 3
    assert stats.chosen_rejected_ratio == round(expected, 3)
    tokenizer = AutoTokenizer.from_pretrained(word_tokenizer(tmp_path / "tok"))
    with_tokens = compute_pair_stats(pairs, tokenizer)
    assert with_tokens.tokens is not None
    # "<|user|> Hi there? <|end|>" is 4 tokens; "<|assistant|> A B <|end|>" 4 more
    assert with_tokens.tokens["prompt"].max == 8
    assert with_tokens.tokens["rejected"].percentiles["p50"] == 3  # of 3, 6 and 3
    assert with_tokens.to_dict()["tokens"]["longest_side"]["max"] == 14
