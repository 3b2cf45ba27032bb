"""Cloud profiles: the store, where keys live, `profile:NAME` specs, and every bad input."""

from __future__ import annotations

import io
import stat
from pathlib import Path

import keyring
import openai
import pytest
from keyring.backends import fail

from memory_keyring import MemoryKeyring
from slmforge.cli.main import main
from slmforge.config.profiles import Profile, ProfileAddConfig
from slmforge.errors import InputError
from slmforge.profiles import (
    key_file,
    load_profiles,
    new_profile,
    profiles_path,
    remove_profile,
    resolve_key,
    save_profile,
)
from slmforge.runtime.remote import RemoteEngine
from slmforge.runtime.specs import EngineSpec, load_engine, parse_engine_spec

KEY = "sk-unit-test-4f9a8c7e1d"


@pytest.fixture(autouse=True)
def home(monkeypatch, tmp_path: Path) -> Path:
    path = tmp_path / "slmforge-home"
    monkeypatch.setenv("SLMFORGE_HOME", str(path))
    return path


@pytest.fixture(autouse=True)
def memory_keyring():
    """Tests never touch the real system keyring."""
    previous = keyring.get_keyring()
    backend = MemoryKeyring()
    keyring.set_keyring(backend)
    yield backend
    keyring.set_keyring(previous)


def add(name: str, key: str | None = None, **options) -> Profile:
    profile = new_profile(ProfileAddConfig(name=name, **options))
    save_profile(name, profile, key)
    return profile


def _run(argv: list[str], capsys, stdin: str | None = None, monkeypatch=None) -> tuple:
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


# -- the store and the keys --------------------------------------------------------------------
def test_profiles_round_trip_without_keys_in_the_file(memory_keyring, home: Path) -> None:
    add("oa", kind="openai", model="gpt-4o-mini", api_key_env="OPENAI_API_KEY")
    add(
        "az",
        KEY,
        kind="azure-openai",
        base_url="https://res.openai.azure.com/",
        api_version="2024-10-21",
        deployment="gpt-4o-mini",
    )
    add("local", kind="compatible", base_url="http://127.0.0.1:8000/v1", model="m", keyless=True)
    profiles = load_profiles()
    assert list(profiles) == ["oa", "az", "local"]
    assert profiles["oa"] == Profile(
        kind="openai",
        base_url="https://api.openai.com/v1",
        model="gpt-4o-mini",
        key="env",
        api_key_env="OPENAI_API_KEY",
    )
    assert profiles["az"].base_url == "https://res.openai.azure.com"
    assert profiles["az"].request_model == "gpt-4o-mini" and profiles["az"].key == "keyring"
    assert memory_keyring.passwords == {("slmforge", "profile:az"): KEY}
    assert KEY not in profiles_path().read_text()
    assert resolve_key("az", profiles["az"]) == KEY
    assert resolve_key("local", profiles["local"]) == "none"
    remove_profile("az")
    assert list(load_profiles()) == ["oa", "local"] and memory_keyring.passwords == {}


def test_key_file_is_mode_600_and_refused_when_opened_up(home: Path) -> None:
    profile = add(
        "f",
        KEY,
        kind="compatible",
        base_url="https://x.example/v1",
        model="m",
        store_key_in_file=True,
    )
    path = key_file("f")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert resolve_key("f", profile) == KEY
    path.chmod(0o644)
    with pytest.raises(InputError) as err:
        resolve_key("f", profile)
    assert str(err.value) == f"{path} is readable by other users (mode 644); run: chmod 600 {path}"
    remove_profile("f")
    assert not path.exists()


def test_replacing_a_profile_forgets_its_old_key(memory_keyring) -> None:
    add("p", KEY, kind="compatible", base_url="https://x.example/v1", model="m")
    add(
        "p",
        kind="compatible",
        base_url="https://x.example/v1",
        model="m",
        api_key_env="P_KEY",
        force=True,
    )
    assert memory_keyring.passwords == {}
    assert load_profiles()["p"].key == "env"


def test_env_key_is_read_at_use(monkeypatch) -> None:
    profile = add("e", kind="openai", model="gpt-4o-mini", api_key_env="E_KEY")
    monkeypatch.setenv("E_KEY", KEY)
    assert resolve_key("e", profile) == KEY


# -- profile:NAME wherever an engine spec is accepted ------------------------------------------
def test_profile_specs_parse_and_load(monkeypatch) -> None:
    add("oa", kind="openai", model="gpt-4o-mini", api_key_env="OA_KEY")
    assert parse_engine_spec("profile:oa") == EngineSpec(
        "openai", "gpt-4o-mini", "https://api.openai.com/v1", profile="oa"
    )
    assert parse_engine_spec("profile:oa:gpt-4.1:latest").model == "gpt-4.1:latest"
    monkeypatch.setenv("OA_KEY", KEY)
    engine = load_engine("profile:oa", max_retries=2)
    assert isinstance(engine, RemoteEngine)
    assert (engine.name, engine.model, engine.max_retries) == ("profile:oa", "gpt-4o-mini", 2)
    assert type(engine._client) is openai.OpenAI


def test_azure_profile_builds_an_azure_client() -> None:
    add(
        "az",
        KEY,
        kind="azure-openai",
        base_url="https://res.openai.azure.com",
        api_version="2024-10-21",
        deployment="gpt-4o-mini",
    )
    engine = load_engine("profile:az")
    assert isinstance(engine._client, openai.AzureOpenAI)
    assert engine.model == "gpt-4o-mini"


# -- bad input: one line, exit 2 ---------------------------------------------------------------
COMPATIBLE = ["--kind", "compatible", "--model", "m", "--keyless"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["profile", "test", "nope"],
            "unknown profile 'nope' (known: none yet); add it with slmforge profile add nope "
            "--kind openai|azure-openai|compatible ...",
        ),
        (
            ["chat", "profile:nope"],
            "unknown profile 'nope' (known: none yet); add it with slmforge profile add nope "
            "--kind openai|azure-openai|compatible ...",
        ),
        (
            ["profile", "remove", "nope"],
            "unknown profile 'nope' (known: none yet); add it with slmforge profile add nope "
            "--kind openai|azure-openai|compatible ...",
        ),
        (
            ["profile", "add", "x", "--base-url", "ftp://example.com/v1", *COMPATIBLE],
            "--base-url: base URL 'ftp://example.com/v1' must start with http:// or https://, "
            "e.g. http://127.0.0.1:8000/v1",
        ),
        (
            ["profile", "add", "x", "--base-url", "127.0.0.1:8000/v1", *COMPATIBLE],
            "--base-url: base URL '127.0.0.1:8000/v1' must start with http:// or https://, "
            "e.g. http://127.0.0.1:8000/v1",
        ),
        (
            ["profile", "add", "x", *COMPATIBLE],
            "compatible profiles need --base-url, e.g. --base-url http://127.0.0.1:8000/v1",
        ),
        (
            ["profile", "add", "x", "--kind", "openai", "--keyless"],
            "openai profiles need --model, e.g. --model gpt-4o-mini",
        ),
        (
            [
                "profile",
                "add",
                "az",
                "--kind",
                "azure-openai",
                "--base-url",
                "https://r.openai.azure.com",
            ],
            "azure-openai profiles need --api-version and --deployment, e.g. "
            "--api-version 2024-10-21 --deployment gpt-4o-mini",
        ),
        (
            ["profile", "add", "x", "--kind", "openai", "--model", "m", "--deployment", "d"],
            "--deployment: not used by openai profiles",
        ),
        (
            ["profile", "add", "bad name", "--kind", "openai", "--model", "m"],
            "profile name 'bad name': use letters, digits, '_', '.' and '-' (starting with a "
            "letter or digit), e.g. azure-gpt4o",
        ),
        (
            [
                "profile",
                "add",
                "x",
                "--kind",
                "openai",
                "--model",
                "m",
                "--api-key-env",
                "K",
                "--keyless",
            ],
            "--api-key-env and --keyless contradict each other; pick one",
        ),
        (
            ["profile", "add", "x", "--kind", "openai", "--model", "m", "--api-key-env", "MY-KEY"],
            "--api-key-env 'MY-KEY' is not an environment variable name; "
            "e.g. --api-key-env OPENAI_API_KEY",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv: list[str], message: str, capsys) -> None:
    code, out, err = _run(argv, capsys)
    assert (code, err) == (2, f"error: {message}\n")
    assert out == "" and not profiles_path().exists()


def test_missing_key_variable(monkeypatch, capsys) -> None:
    monkeypatch.delenv("NOT_SET_KEY", raising=False)
    add("e", kind="openai", model="gpt-4o-mini", api_key_env="NOT_SET_KEY")
    code, _, err = _run(["profile", "test", "e"], capsys)
    assert code == 2
    assert err == (
        "error: profile 'e' reads its key from the environment variable NOT_SET_KEY, which is "
        "not set; export NOT_SET_KEY=... and run again\n"
    )


def test_existing_profile_needs_force(capsys) -> None:
    add("e", kind="openai", model="gpt-4o-mini", api_key_env="E_KEY")
    code, _, err = _run(
        ["profile", "add", "e", "--kind", "openai", "--model", "m", "--api-key-env", "E"], capsys
    )
    assert (code, err) == (2, "error: profile 'e' exists; pass --force to replace it\n")


def test_no_system_keyring_says_what_to_do_instead(monkeypatch, capsys) -> None:
    keyring.set_keyring(fail.Keyring())
    code, _, err = _run(
        ["profile", "add", "k", "--kind", "openai", "--model", "m"], capsys, KEY, monkeypatch
    )
    assert code == 2
    assert err == (
        "error: no system keyring is available here; use --api-key-env VAR to read the key "
        "from an environment variable, or --store-key-in-file\n"
    )


def test_empty_key_on_stdin(monkeypatch, capsys) -> None:
    code, _, err = _run(
        ["profile", "add", "k", "--kind", "openai", "--model", "m"], capsys, "\n", monkeypatch
    )
    assert code == 2
    assert err == (
        "error: profile 'k': no API key given; type it when asked or pipe it in "
        "(printenv MY_KEY | slmforge profile add k ...), or use --api-key-env VAR\n"
    )
    assert not profiles_path().exists()


def test_malformed_profiles_file_names_the_file(home: Path, capsys) -> None:
    home.mkdir()
    profiles_path().write_text("profiles:\n  x:\n    kind: openai\n    base_ur: h\n")
    code, _, err = _run(["profile", "list"], capsys)
    path = profiles_path()
    assert code == 2
    assert err == (
        f"error: {path}: profiles.x.base_url: required; "
        f"{path}: profiles.x.base_ur: unknown field, did you mean base_url?\n"
    )


def test_unknown_kind_is_refused_by_the_option_parser(capsys) -> None:
    code, _, err = _run(["profile", "add", "x", "--kind", "azure", "--model", "m"], capsys)
    assert code == 2
    assert "'azure' is not one of 'openai'," in err
