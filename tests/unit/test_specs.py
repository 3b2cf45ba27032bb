"""Engine specs as users type them: parsing, errors, and which engine each one builds."""

from __future__ import annotations

import sys
import types

import pytest

from slmforge.errors import InputError
from slmforge.runtime.remote import RemoteEngine
from slmforge.runtime.specs import (
    OPENAI_DEFAULT_BASE_URL,
    AdapterSelected,
    EngineSpec,
    load_engine,
    parse_engine_spec,
)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            "openai:gpt-4o-mini@https://api.openai.com/v1",
            EngineSpec("openai", "gpt-4o-mini", "https://api.openai.com/v1"),
        ),
        (
            "openai:travel@http://127.0.0.1:8000/v1/",
            EngineSpec("openai", "travel", "http://127.0.0.1:8000/v1"),
        ),
        ("  openai:m@http://localhost:1/v1  ", EngineSpec("openai", "m", "http://localhost:1/v1")),
        ("Qwen/Qwen2.5-0.5B-Instruct", EngineSpec("local", "Qwen/Qwen2.5-0.5B-Instruct")),
        (
            "models/base+adapters/travel",
            EngineSpec("local", "models/base", None, "adapters/travel"),
        ),
    ],
)
def test_parse_forms(spec: str, expected: EngineSpec) -> None:
    assert parse_engine_spec(spec, env={}) == expected


def test_openai_without_url_uses_env_then_default() -> None:
    env = {"OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}
    assert parse_engine_spec("openai:x", env=env).base_url == "http://127.0.0.1:9/v1"
    assert parse_engine_spec("openai:x", env={}).base_url == OPENAI_DEFAULT_BASE_URL


def test_existing_path_with_plus_is_a_path(tmp_path) -> None:
    folder = tmp_path / "model+v2"
    folder.mkdir()
    assert parse_engine_spec(str(folder)) == EngineSpec("local", str(folder))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty engine spec"),
        ("   ", "empty engine spec"),
        ("openai:", "names no model"),
        ("openai:@http://x/v1", "names no model"),
        ("openai:m@ftp://host/v1", "must start with http:// or https://"),
        ("openai:m@", "must start with http:// or https://"),
        ("openai:m@127.0.0.1:8000/v1", "must start with http:// or https://"),
        ("azure:gpt-4o", "unknown engine kind 'azure'"),
        ("http://127.0.0.1:8000/v1", "did you mean openai:MODEL@http://127.0.0.1:8000/v1"),
        ("base+", "expected PATH+ADAPTER_DIR"),
        ("+adapter", "expected PATH+ADAPTER_DIR"),
    ],
)
def test_malformed_specs_say_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(InputError, match=message.replace("+", r"\+").replace(".", r"\.")):
        parse_engine_spec(spec, env={})


def test_load_remote_engine_for_local_url_needs_no_key(monkeypatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    engine = load_engine("openai:teacher@http://127.0.0.1:8000/v1", timeout_s=5, max_retries=1)
    assert isinstance(engine, RemoteEngine)
    assert (engine.model, engine.base_url, engine.max_retries) == (
        "teacher",
        "http://127.0.0.1:8000/v1",
        1,
    )


def test_load_remote_engine_without_key_names_the_env_var(monkeypatch) -> None:
    monkeypatch.delenv("MY_TEACHER_KEY", raising=False)
    with pytest.raises(InputError, match="MY_TEACHER_KEY"):
        load_engine("openai:gpt-4o-mini@https://api.example.com/v1", api_key_env="MY_TEACHER_KEY")


class _FakeTorchEngine:
    def __init__(self, path: str, adapters: dict[str, str] | None = None, **options) -> None:
        self.name = f"torch:{path}"
        self.path, self.adapter_dirs, self.options = path, adapters or {}, options
        self.calls: list[str | None] = []

    def chat(self, messages, params, adapter=None):
        self.calls.append(adapter)
        return iter([])

    def adapters(self) -> list[str]:
        return list(self.adapter_dirs)


@pytest.fixture
def fake_torch_engine(monkeypatch):
    module = types.ModuleType("slmforge.runtime.torch_engine")
    module.TorchEngine = _FakeTorchEngine  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "slmforge.runtime.torch_engine", module)
    return _FakeTorchEngine


def test_local_spec_builds_torch_engine(fake_torch_engine, tmp_path) -> None:
    engine = load_engine(str(tmp_path), device="cpu")
    assert isinstance(engine, fake_torch_engine)
    assert engine.path == str(tmp_path)
    assert engine.options == {"device": "cpu"}


def test_base_plus_adapter_selects_the_adapter(fake_torch_engine, tmp_path) -> None:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    engine = load_engine(f"base-model+{adapter}")
    assert isinstance(engine, AdapterSelected)
    assert engine.engine.adapter_dirs == {"default": str(adapter)}
    list(engine.chat([], None))
    list(engine.chat([], None, adapter="other"))
    assert engine.engine.calls == ["default", "other"]
    assert engine.adapters() == ["default"]


def test_missing_adapter_folder_is_an_input_error(fake_torch_engine, tmp_path) -> None:
    with pytest.raises(InputError, match="adapter folder not found"):
        load_engine(f"base-model+{tmp_path / 'nope'}")


# -- one set of rules: schemes and local folders ------------------------------------------------
def test_a_registered_scheme_parses_and_builds(monkeypatch) -> None:
    from slmforge.runtime import schemes

    built: list[EngineSpec] = []

    def parse(spec: str, rest: str) -> EngineSpec:
        return EngineSpec("openai", rest, "http://127.0.0.1:9/v1")

    def build(parsed: EngineSpec, remote: schemes.RemoteOptions) -> object:
        built.append(parsed)
        return "engine"

    monkeypatch.setitem(schemes._SCHEMES, "lab", schemes.Scheme("lab", "lab:NAME", parse, build))
    parsed = parse_engine_spec("lab:m1")
    assert parsed == EngineSpec("openai", "m1", "http://127.0.0.1:9/v1")
    assert parsed.scheme == "lab"
    assert load_engine("lab:m1") == "engine" and built == [parsed]
    with pytest.raises(InputError, match="lab:NAME"):
        parse_engine_spec("")


def test_deploy_scheme_comes_from_its_entry_point() -> None:
    from slmforge.runtime.schemes import ENTRY_POINT_GROUP, scheme

    deploy = scheme("deploy")
    assert deploy is not None and deploy.form == "deploy:NAME"
    with pytest.raises(InputError, match="names no deployment"):
        parse_engine_spec("deploy:")
    assert ENTRY_POINT_GROUP == "slmforge.engine_specs"


def _adapter_folder(path, base: str):
    path.mkdir()
    (path / "adapter_config.json").write_text(f'{{"base_model_name_or_path": "{base}"}}')
    return path


def test_adapter_folder_runs_its_base_with_it(fake_torch_engine, tmp_path) -> None:
    from slmforge.runtime.local_models import plan_local

    adapter = _adapter_folder(tmp_path / "travel", "org/base")
    engine = load_engine(str(adapter))
    assert isinstance(engine, AdapterSelected) and engine.engine.path == "org/base"
    assert engine.engine.adapter_dirs == {"default": str(adapter)}
    served = plan_local(str(adapter), select=False)  # a server names it after its folder
    assert (served.base, served.adapters, served.selected) == (
        "org/base",
        {"travel": str(adapter)},
        None,
    )


def test_local_rules_are_checked_before_loading(tmp_path) -> None:
    from slmforge.runtime.specs import checked_spec

    onnx = tmp_path / "onnx"
    onnx.mkdir()
    (onnx / "genai_config.json").write_text("{}")
    (onnx / "travel.onnx_adapter").write_bytes(b"")
    with pytest.raises(InputError, match=r"has no adapter 'nope' \(known: travel\)"):
        checked_spec(f"{onnx}+nope")
    assert checked_spec(f"{onnx}+travel").adapter == "travel"
    with pytest.raises(InputError, match=r"^target t: .*no such model folder"):
        checked_spec(str(tmp_path / "missing"), "target t")
    with pytest.raises(InputError, match=r"^--local: no such folder: org/model; .*deploy:NAME"):
        checked_spec("org/model", "--local", hub=False)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(InputError, match="expected a model folder, not a file"):
        checked_spec(str(tmp_path / "file.txt"))
