"""`slmforge doctor` as a user runs it: on this machine, in an environment without the extras,
and with the fit check for a model folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from slmforge.cli.main import main

REPO = Path(__file__).resolve().parents[2]


def _doctor_json(argv: list[str], capsys) -> tuple[int, dict]:
    with pytest.raises(SystemExit) as exit_info:
        main(["doctor", "--json", *argv])
    return exit_info.value.code, json.loads(capsys.readouterr().out)


def _by_id(report: dict) -> dict[str, dict]:
    return {item["id"]: item for item in report["checks"]}


def test_doctor_reports_this_machine(monkeypatch, tmp_path: Path, capsys) -> None:
    import onnxruntime
    import torch

    monkeypatch.setenv("SLMFORGE_HOME", str(tmp_path / "home"))
    code, report = _doctor_json([], capsys)
    checks = _by_id(report)
    assert code == (1 if report["status"] == "error" else 0)
    # what torch itself says decides what doctor must say
    gpu = checks["gpu"]["details"]
    if torch.cuda.is_available():
        assert gpu["accelerator"] in ("cuda", "rocm") and gpu["devices"]
    elif not torch.backends.mps.is_available() and not Path("/proc/driver/nvidia").exists():
        assert gpu["accelerator"] == "cpu" and gpu["devices"] == []
        assert checks["gpu"]["summary"].startswith("no GPU: CPU only")
        assert checks["torch"]["details"]["build"] == ("cuda" if torch.version.cuda else "cpu")
        assert checks["torch"]["details"]["cuda_available"] is False
    providers = onnxruntime.get_available_providers()
    assert checks["onnxruntime"]["details"]["providers"] == providers
    assert all(p in checks["onnxruntime"]["summary"] for p in providers)
    assert checks["onnxruntime_genai"]["details"]["version"] == metadata.version(
        "onnxruntime-genai"
    )
    # the test environment has every extra, so none is flagged
    assert checks["extra.onnx"]["status"] == "ok" and checks["extra.train"]["status"] == "ok"


def test_doctor_table_ends_with_counts(monkeypatch, tmp_path: Path, capsys) -> None:
    monkeypatch.setenv("SLMFORGE_HOME", str(tmp_path / "home"))
    with pytest.raises(SystemExit):
        main(["doctor"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].endswith(" errors") and " ok, " in lines[-1]
    assert any(line.startswith("ok") and " python " in line for line in lines)


def _base_install(site: Path) -> None:
    """Make `site` hold exactly slmforge's base install: its distribution and every package
    its requirements (without extras) pull in, linked from this environment."""
    todo, seen = ["slmforge"], set()
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        dist = metadata.distribution(name)
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
        root = Path(dist.locate_file(""))
        for top in {Path(str(f)).parts[0] for f in dist.files or []}:
            if top.startswith("..") or top.endswith(".pth") or top == "__pycache__":
                continue
            if (root / top).exists() and not (site / top).exists():
                (site / top).symlink_to(root / top)
    assert "torch" not in seen and "onnxruntime" not in seen


def test_missing_extra_is_flagged_in_an_environment_without_it(tmp_path: Path) -> None:
    site = tmp_path / "site-packages"
    site.mkdir()
    _base_install(site)
    code = (
        f"import sys; sys.path[:0] = [{str(site)!r}, {str(REPO / 'src')!r}]; "
        "from slmforge.cli.main import main; main(['doctor', '--json'])"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["SLMFORGE_HOME"] = str(tmp_path / "home")
    # -I -S: no site-packages, no user site, no PYTHONPATH: only the base install is importable
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    checks = _by_id(json.loads(result.stdout))
    command = f"pip install -e '{REPO}[onnx]'"
    onnx = checks["extra.onnx"]
    assert onnx["status"] == "warning" and onnx["fix"] == command
    assert {"onnx", "onnxruntime", "onnxruntime-genai"} <= set(onnx["details"]["missing"])
    assert onnx["summary"].startswith("slmforge[onnx] missing: ")
    assert checks["onnxruntime"]["status"] == "warning"
    assert checks["onnxruntime"]["fix"] == command
    assert checks["torch"]["fix"] == f"pip install -e '{REPO}[train]'"
    assert checks["extra.cloud"]["details"]["missing"] == ["keyring"]


def test_fit_check_for_a_model_folder(tiny_llama: Path, capsys) -> None:
    code, report = _doctor_json(
        ["--model", str(tiny_llama), "--batch-size", "2", "--max-seq-len", "128"], capsys
    )
    checks = _by_id(report)
    fit = report["fit"]
    assert fit["model"] == str(tiny_llama) and fit["problems"] == []
    manifest = json.loads((tiny_llama / "slmforge.json").read_text())
    assert fit["parameters"] == manifest["metrics"]["parameters"]
    finetune = checks["fit.finetune"]
    assert finetune["details"] == fit["finetune"]
    assert finetune["status"] == "ok" and finetune["details"]["fits"] is True
    assert finetune["details"]["largest_batch_size"] >= 2
    assert finetune["summary"].startswith("lora fine-tuning (fp32, batch 2 x 128) needs ~")
    assert checks["fit.inference"]["details"]["precision"] == "int4"
    assert code == (1 if report["status"] == "error" else 0)
