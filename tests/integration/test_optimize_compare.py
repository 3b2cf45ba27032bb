"""`slmforge optimize --compare rtn,gptq,int8` on the tiny llama, through the CLI: three real
builds under OUT/NAME, measured against PyTorch on held-out text, with compare.json/.md/.svg;
and the bad inputs that must stop it before any work."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

from slmforge.artifacts import read_manifest
from slmforge.cli.main import main
from slmforge.data.sample import write_sample

pytestmark = pytest.mark.integration

FIELDS = {"kl", "ppl", "ppl_source", "agreement", "size_bytes", "build_s", "tokens_per_s"}
SMALL = ["--calibration-samples", "8", "--calibration-seq-len", "128"]
SMALL += ["--verify-prompts", "2", "--verify-tokens", "8", "--eval-rows", "12"]


@pytest.fixture(scope="module")
def travel(tmp_path_factory) -> dict[str, Path]:
    """The sample travel data: calibration rows and separate held-out rows."""
    root = tmp_path_factory.mktemp("travel")
    lines = write_sample(root / "all.jsonl").read_text(encoding="utf-8").splitlines(True)
    (root / "calibration.jsonl").write_text("".join(lines[:160]), encoding="utf-8")
    (root / "heldout.jsonl").write_text("".join(lines[160:]), encoding="utf-8")
    return {"calibration": root / "calibration.jsonl", "heldout": root / "heldout.jsonl"}


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


@pytest.fixture(scope="module")
def ladder(tiny_llama, travel, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("ladder") / "out"
    argv = ["optimize", "--model", str(tiny_llama), "--out", str(out)]
    argv += ["--compare", "rtn,gptq,int8", "--eval-data", str(travel["heldout"])]
    argv += ["--calibration-data", str(travel["calibration"]), *SMALL]
    with pytest.raises(SystemExit) as exit_info, pytest.MonkeyPatch.context() as patch:
        patch.setenv("COLUMNS", "160")  # the summary table fits without truncation
        stdout = io.StringIO()
        patch.setattr(sys, "stdout", stdout)
        main(argv)
    assert exit_info.value.code in (0, None)
    return out, stdout.getvalue()


def test_every_variant_is_built_and_measured(ladder):
    out, _ = ladder
    report = json.loads((out / "compare.json").read_text(encoding="utf-8"))
    variants = report["variants"]
    assert list(variants) == ["rtn", "gptq", "int8"]
    for name, v in variants.items():
        assert set(v) >= FIELDS, name
        assert read_manifest(out / name).kind == "onnx_model"
        assert v["kl"] >= 0 and 0 < v["agreement"] <= 1, v
        assert v["size_bytes"] > 0 and v["build_s"] > 0 and v["tokens_per_s"] > 0, v
        assert v["ppl_source"] == report["ppl_source"] > 1
    assert variants["int8"]["kl"] < variants["rtn"]["kl"]
    assert variants["int8"]["agreement"] >= variants["rtn"]["agreement"]
    assert abs(variants["int8"]["ppl"] / report["ppl_source"] - 1) < 0.01
    assert variants["int8"]["size_bytes"] > variants["rtn"]["size_bytes"]
    assert variants["gptq"]["precision"] == "int4" and variants["gptq"]["algo"] == "gptq"


def test_the_ladder_is_one_artifact_with_a_report_and_chart(ladder, travel):
    out, stdout = ladder
    manifest = read_manifest(out)
    assert manifest.kind == "optimize_compare"
    assert set(manifest.metrics) == {"rtn", "gptq", "int8"}
    assert manifest.source["eval_data"].path == str(travel["heldout"])
    assert {"compare.json", "compare.md", "compare.svg"} <= set(manifest.files)
    text = (out / "compare.md").read_text(encoding="utf-8")
    assert "| variant | KL |" in text and "| rtn (int4) |" in text and "| int8 |" in text
    assert "![KL divergence and size per variant](compare.svg)" in text
    assert (out / "compare.svg").read_text(encoding="utf-8").startswith("<svg")
    assert "quality ladder" in stdout and "gptq (int4)" in stdout
    assert not list(out.parent.glob(".out*"))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--compare", "rtn,q9", "--eval-data", "{heldout}"], "unknown entry 'q9'"),
        (["--compare", "rtn,gptq", "--eval-data", "{heldout}"], "needs --calibration-data"),
        (["--compare", "rtn"], "--compare needs --eval-data"),
        (["--compare", "rtn", "--eval-data", "{missing}"], "missing.jsonl"),
    ],
)
def test_bad_ladders_are_one_line_exit_2_nothing_left(
    tiny_llama, travel, tmp_path, capsys, extra, message
):
    files = {"heldout": travel["heldout"], "missing": tmp_path / "missing.jsonl"}
    out = tmp_path / "out"
    argv = ["optimize", "--model", str(tiny_llama), "--out", str(out)]
    argv += [arg.format(**files) for arg in extra]
    code, _, err = _run(argv, capsys)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and message in errors[0], err
    assert not out.exists() and not list(tmp_path.glob(".out*"))
