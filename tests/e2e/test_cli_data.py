"""`slmforge data ...` as a user types it: exit codes, messages, files written or not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from data_helpers import word_tokenizer, write_jsonl
from slmforge.cli.main import main
from slmforge.data.sample import sample_pairs
from slmforge.data.sample_preference import preference_rows


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    code = 0
    try:
        main(["--log-format", "plain", *argv])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def sample(tmp_path: Path, capsys) -> Path:
    path = tmp_path / "travel.jsonl"
    code, out, _ = run(capsys, "data", "sample", "--out", str(path))
    assert code == 0 and f"wrote {len(sample_pairs())} examples" in out
    return path


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_sample_validates_clean(sample: Path, capsys) -> None:
    code, out, _ = run(capsys, "data", "validate", str(sample))
    assert code == 0
    assert "ok: 200 valid examples" in out
    assert "warning:" not in out and "error:" not in out


def test_validate_prints_every_finding_and_exits_2(tmp_path: Path, capsys) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", '
        '"content": "b"}]}\n{"messages": []\n'
        '{"messages": [{"role": "assistant", "content": "x"}]}\n',
        encoding="utf-8",
    )
    code, out, err = run(
        capsys,
        "data",
        "validate",
        str(path),
        "--report",
        str(tmp_path / "r.json"),
        "--min-examples",
        "0",
    )
    assert code == 2
    assert f"{path}:2: error: invalid JSON: Expecting ',' delimiter at column 16" in out
    assert f"{path}:3 [messages[0].role]: error: expected a user message here" in out
    assert err.startswith(f"error: 2 errors in {path}") and "--drop-invalid" in err
    assert [f["line"] for f in json.loads((tmp_path / "r.json").read_text())["findings"]] == [2, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "r.json"]


def test_validate_warnings_exit_0(tmp_path: Path, capsys) -> None:
    rows = [{"prompt": "Hi", "response": "a"}, {"prompt": "hi", "response": "b"}]
    code, out, _ = run(capsys, "data", "validate", str(write_jsonl(tmp_path / "d.jsonl", rows)))
    assert code == 0
    assert "[prompt]: warning: the same prompt with different answers on lines 1, 2" in out
    assert "only 2 examples (fewer than --min-examples 10)" in out


def test_validate_with_tokenizer_and_two_files(tmp_path: Path, capsys) -> None:
    tokenizer = word_tokenizer(tmp_path / "tok")
    train = write_jsonl(tmp_path / "train.jsonl", [{"prompt": "a b c d e f", "response": "g"}])
    valid = write_jsonl(tmp_path / "valid.jsonl", [{"prompt": "A  b c d e f", "response": "h"}])
    code, out, _ = run(
        capsys,
        "data",
        "validate",
        str(train),
        str(valid),
        "--tokenizer",
        str(tokenizer),
        "--max-seq-len",
        "8",
        "--min-examples",
        "0",
    )
    assert code == 0
    assert f"{train}:1: warning: 11 tokens, longer than --max-seq-len 8" in out
    assert f"{valid}:1 [prompt]: warning: prompt also in {train} line 1" in out


def test_validate_drop_invalid_writes_clean_copy(tmp_path: Path, capsys) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(
        '{"prompt": "a", "response": "b"}\n{"prompt": 1, "response": "b"}\n', encoding="utf-8"
    )
    clean = tmp_path / "clean.jsonl"
    code, out, _ = run(
        capsys,
        "data",
        "validate",
        str(path),
        "--drop-invalid",
        "--out",
        str(clean),
        "--output-format",
        "prompt_response",
        "--min-examples",
        "0",
    )
    assert code == 0
    assert "dropped 1 invalid records (lines: 2); wrote 1 examples" in out
    assert _rows(clean) == [{"prompt": "a", "response": "b"}]
    code, _, err = run(capsys, "data", "validate", str(path), "--drop-invalid", "--out", str(clean))
    assert code == 2 and "already exists; pass --force" in err


def test_convert_round_trip_and_text(sample: Path, tmp_path: Path, capsys) -> None:
    messages, back, text = (tmp_path / n for n in ("m.jsonl", "back.jsonl", "t.jsonl"))
    assert (
        run(
            capsys,
            "data",
            "convert",
            str(sample),
            "--out",
            str(messages),
            "--system-prompt",
            "You are a travel assistant.",
        )[0]
        == 0
    )
    assert _rows(messages)[0]["messages"][0]["role"] == "system"
    assert (
        run(
            capsys,
            "data",
            "convert",
            str(messages),
            "--out",
            str(back),
            "--output-format",
            "prompt_response",
        )[0]
        == 0
    )
    assert back.read_bytes() == sample.read_bytes()
    code, out, _ = run(
        capsys,
        "data",
        "convert",
        str(sample),
        "--out",
        str(text),
        "--text-template",
        r"<|user|>\n{prompt}<|end|>\n<|assistant|>\n{response}",
    )
    assert code == 0 and "wrote 200 examples" in out
    assert _rows(text)[0]["text"].startswith("<|user|>\nWhat's a must-see in Lisbon?<|end|>\n")


def test_convert_failures_leave_nothing_behind(tmp_path: Path, capsys) -> None:
    turns = [
        {"role": role, "content": text}
        for role, text in (("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d"))
    ]
    multi = [{"messages": turns}]
    source = write_jsonl(tmp_path / "multi.jsonl", multi)
    out = tmp_path / "out.jsonl"
    code, _, err = run(
        capsys,
        "data",
        "convert",
        str(source),
        "--out",
        str(out),
        "--output-format",
        "prompt_response",
    )
    assert code == 2 and f"error: {source}:1 [messages]: has 4 turns" in err
    code, _, err = run(
        capsys, "data", "convert", str(source), "--out", str(out), "--text-template", "{prompt}"
    )
    assert code == 2 and "--text-template must contain {response}" in err
    assert not out.exists() and _leftovers(tmp_path) == []


def test_convert_force_rule(sample: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text("old\n")
    code, _, err = run(capsys, "data", "convert", str(sample), "--out", str(out))
    assert code == 2 and "already exists; pass --force" in err and out.read_text() == "old\n"
    assert run(capsys, "data", "convert", str(sample), "--out", str(out), "--force")[0] == 0
    assert len(_rows(out)) == 200


def test_convert_csv_with_field_mapping(tmp_path: Path, capsys) -> None:
    source = tmp_path / "d.csv"
    source.write_text("q,a\nWhere?,Here.\n", encoding="utf-8")
    out = tmp_path / "o.jsonl"
    code, _, _ = run(
        capsys,
        "data",
        "convert",
        str(source),
        "--out",
        str(out),
        "--prompt-field",
        "q",
        "--response-field",
        "a",
        "--output-format",
        "prompt_response",
    )
    assert code == 0 and _rows(out) == [{"prompt": "Where?", "response": "Here."}]


def test_split_and_force(sample: Path, tmp_path: Path, capsys) -> None:
    out_dir = tmp_path / "parts"
    code, out, _ = run(
        capsys,
        "data",
        "split",
        str(sample),
        "--out-dir",
        str(out_dir),
        "--validation",
        "20",
        "--test",
        "0.1",
        "--seed",
        "7",
    )
    assert code == 0 and "validation" in out
    counts = {p.stem: len(_rows(p)) for p in out_dir.glob("*.jsonl")}
    assert counts == {"train": 160, "validation": 20, "test": 20}
    first = (out_dir / "validation.jsonl").read_bytes()
    code, _, err = run(capsys, "data", "split", str(sample), "--out-dir", str(out_dir))
    assert code == 2 and "pass --force" in err
    assert (
        run(
            capsys,
            "data",
            "split",
            str(sample),
            "--out-dir",
            str(out_dir),
            "--validation",
            "20",
            "--test",
            "0.1",
            "--seed",
            "7",
            "--force",
        )[0]
        == 0
    )
    assert (out_dir / "validation.jsonl").read_bytes() == first


def test_split_of_bad_data_writes_nothing(tmp_path: Path, capsys) -> None:
    source = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "response": "b"}] * 3)
    code, _, err = run(
        capsys,
        "data",
        "split",
        str(source),
        "--out-dir",
        str(tmp_path / "o"),
        "--validation",
        "0.5",
    )
    assert code == 2 and "nothing is left to train on" in err
    assert not (tmp_path / "o").exists() and _leftovers(tmp_path) == []


def test_stats_table_and_json(sample: Path, tmp_path: Path, capsys) -> None:
    tokenizer = word_tokenizer(tmp_path / "tok")
    code, out, _ = run(capsys, "data", "stats", str(sample), "--tokenizer", str(tokenizer))
    assert code == 0 and "tokens p95" in out and "token lengths" in out
    code, out, _ = run(capsys, "data", "stats", str(sample), "--json-output")
    assert code == 0
    stats = json.loads(out)
    assert stats["examples"] == 200 and stats["repeated_prompts"] == 0 and stats["tokens"] is None


def test_bad_option_values_exit_2(sample: Path, tmp_path: Path, capsys) -> None:
    code, _, err = run(
        capsys,
        "data",
        "convert",
        str(sample),
        "--out",
        str(tmp_path / "o"),
        "--input-format",
        "yaml",
    )
    assert code == 2
    code, _, err = run(capsys, "data", "validate", str(sample), "--max-seq-len", "0")
    assert code == 2 and "--max-seq-len" in err


def test_installed_entry_point(sample: Path) -> None:
    """The console script a user runs, in a fresh process: exit code and one-line error."""
    script = Path(sys.executable).parent / "slmforge"
    bad = sample.parent / "bad.jsonl"
    bad.write_text("{}\n")
    result = subprocess.run(
        [str(script), "data", "validate", str(bad)],
        capture_output=True,
        text=True,
        env={**os.environ, "NO_COLOR": "1"},
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: 1 errors in")
    assert "Traceback" not in result.stderr


# -- preference pairs -------------------------------------------------------------------------
@pytest.fixture
def pairs(tmp_path: Path, capsys) -> Path:
    path = tmp_path / "pairs.jsonl"
    code, out, _ = run(capsys, "data", "sample", "--kind", "preference", "--out", str(path))
    assert code == 0 and f"wrote {len(preference_rows())} pairs" in out
    return path


def test_preference_sample_validates_converts_and_describes(
    pairs: Path, tmp_path: Path, capsys
) -> None:
    code, out, _ = run(capsys, "data", "validate", str(pairs))
    assert code == 0 and "ok: 190 valid pairs" in out and "warning:" not in out
    trl = tmp_path / "trl.jsonl"
    code, out, _ = run(
        capsys, "data", "convert", str(pairs), "--out", str(trl), "--output-format", "trl_text"
    )
    assert code == 0 and f"wrote 190 pairs to {trl}" in out
    first, source = _rows(trl)[0], _rows(pairs)[0]
    assert first == {
        "prompt": source["input"]["messages"][0]["content"],
        "chosen": source["preferred_output"][0]["content"],
        "rejected": source["non_preferred_output"][0]["content"],
    }
    code, out, _ = run(capsys, "data", "stats", str(trl), "--json-output")
    stats = json.loads(out)
    assert code == 0 and stats["pairs"] == 190 and stats["repeated_prompts"] == 0
    code, out, _ = run(
        capsys, "data", "stats", str(pairs), "--tokenizer", str(word_tokenizer(tmp_path / "t"))
    )
    assert code == 0 and "chosen/rejected length (tokens)" in out and "token lengths" in out


def test_preference_validate_names_line_and_field(tmp_path: Path, capsys) -> None:
    good = {"role": "assistant", "content": "Try a francesinha."}
    rows = [
        {
            "input": {"messages": [{"role": "user", "content": "Porto?"}]},
            "preferred_output": [good],
        },
        {
            "input": {"messages": [{"role": "user", "content": "Food?"}]},
            "preferred_output": [good],
            "non_preferred_output": [good],
        },
    ]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    code, out, err = run(capsys, "data", "validate", str(path))
    assert code == 2
    assert f"{path}:1 [non_preferred_output]: error: missing 'non_preferred_output'" in out
    assert f"{path}:2 [non_preferred_output]: error: chosen and rejected are identical" in out
    assert "2 errors in" in err


def test_preference_split_and_refusals(pairs: Path, tmp_path: Path, capsys) -> None:
    out_dir = tmp_path / "split"
    code, _, _ = run(capsys, "data", "split", str(pairs), "--out-dir", str(out_dir))
    assert code == 0
    train, validation = _rows(out_dir / "train.jsonl"), _rows(out_dir / "validation.jsonl")
    assert len(train) + len(validation) == 190 and len(validation) == 19
    assert "preferred_output" in train[0]
    code, _, err = run(
        capsys,
        "data",
        "convert",
        str(pairs),
        "--out",
        str(tmp_path / "m.jsonl"),
        "--output-format",
        "messages",
    )
    assert code == 2 and "holds preference pairs" in err
    assert not (tmp_path / "m.jsonl").exists()
    code, _, err = run(capsys, "data", "augment", str(pairs), "--out", str(tmp_path / "a.jsonl"))
    assert code == 2 and "this is a preference row" in err
    assert not (tmp_path / "a.jsonl").exists()
