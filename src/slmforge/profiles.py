"""Cloud profiles: named OpenAI-compatible endpoints that every stage can use as `profile:NAME`.

Profiles live in `$SLMFORGE_HOME/profiles.yaml` (URL, kind, model or deployment, where the key
is). The key itself is never in that file and never in a message, log or listing. It comes from:

  env      an environment variable named in the profile, read at use (nothing stored)
  keyring  the system keyring (`keyring` package; service "slmforge", user "profile:NAME")
  file     `$SLMFORGE_HOME/keys/NAME.key`, created with mode 600, only with --store-key-in-file
  none     no key (a local server); "none" is sent because the client insists on one

A kind is a small record of what differs between endpoints (default URL, required fields,
client), so adding one is one entry in `KINDS`.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from slmforge import progress
from slmforge.artifacts import atomic_file
from slmforge.config import validation_message
from slmforge.config.endpoints import LOCAL_KEY, OPENAI_DEFAULT_BASE_URL, check_base_url
from slmforge.config.profiles import KeySource, Profile, ProfileAddConfig
from slmforge.errors import ConfigError, InputError, MissingDependencyError
from slmforge.home import slmforge_home

KEYRING_SERVICE = "slmforge"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class KindSpec:
    """What one kind of endpoint needs: a default URL, required options, an example URL."""

    default_base_url: str | None
    required: tuple[str, ...]
    example_url: str


KINDS: dict[str, KindSpec] = {
    "openai": KindSpec(OPENAI_DEFAULT_BASE_URL, ("model",), OPENAI_DEFAULT_BASE_URL),
    "azure-openai": KindSpec(
        None, ("api_version", "deployment"), "https://my-resource.openai.azure.com"
    ),
    "compatible": KindSpec(None, ("model",), "http://127.0.0.1:8000/v1"),
}
_EXAMPLES = {
    "model": "--model gpt-4o-mini",
    "api_version": "--api-version 2024-10-21",
    "deployment": "--deployment gpt-4o-mini",
}


def profiles_path() -> Path:
    return slmforge_home() / "profiles.yaml"


def key_file(name: str) -> Path:
    return slmforge_home() / "keys" / f"{name}.key"


# -- the store ---------------------------------------------------------------------------------
def load_profiles() -> dict[str, Profile]:
    """Every stored profile by name ({} when there is no profiles file yet)."""
    path = profiles_path()
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc.__class__.__name__})") from None
    entries = data.get("profiles") if isinstance(data, dict) else None
    if not isinstance(entries, dict):
        raise ConfigError(f"{path}: expected a 'profiles:' mapping of NAME -> profile")
    profiles = {}
    for name, values in entries.items():
        try:
            profiles[str(name)] = Profile.model_validate(values)
        except ValidationError as exc:
            prefix = f"{path}: profiles.{name}"
            raise ConfigError(validation_message(Profile, exc, prefix=prefix)) from None
    return profiles


def _write_profiles(profiles: dict[str, Profile]) -> None:
    data = {
        "profiles": {
            name: profile.model_dump(exclude_none=True) for name, profile in profiles.items()
        }
    }
    with atomic_file(profiles_path(), force=True) as temp:
        temp.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


def get_profile(name: str) -> Profile:
    profiles = load_profiles()
    if name in profiles:
        return profiles[name]
    known = ", ".join(sorted(profiles)) or "none yet"
    raise InputError(
        f"unknown profile {name!r} (known: {known}); add it with "
        f"slmforge profile add {name or 'NAME'} --kind openai|azure-openai|compatible ..."
    )


# -- adding and removing -----------------------------------------------------------------------
def _key_source(cfg: ProfileAddConfig) -> KeySource:
    chosen = [
        flag
        for flag, given in (
            ("--api-key-env", cfg.api_key_env is not None),
            ("--store-key-in-file", cfg.store_key_in_file),
            ("--keyless", cfg.keyless),
        )
        if given
    ]
    if len(chosen) > 1:
        raise InputError(f"{' and '.join(chosen)} contradict each other; pick one")
    if cfg.api_key_env is not None:
        if not _ENV_NAME.match(cfg.api_key_env):
            raise InputError(
                f"--api-key-env {cfg.api_key_env!r} is not an environment variable name; "
                "e.g. --api-key-env OPENAI_API_KEY"
            )
        return "env"
    if cfg.store_key_in_file:
        return "file"
    return "none" if cfg.keyless else "keyring"


def _check_kind_options(cfg: ProfileAddConfig) -> None:
    spec = KINDS[cfg.kind]
    missing = [field for field in spec.required if not getattr(cfg, field)]
    if missing:
        flags = " and ".join(f"--{f.replace('_', '-')}" for f in missing)
        examples = " ".join(_EXAMPLES[f] for f in missing)
        raise InputError(f"{cfg.kind} profiles need {flags}, e.g. {examples}")
    unused = [
        f
        for f in ("model", "api_version", "deployment")
        if getattr(cfg, f) and f not in spec.required
    ]
    if unused:
        flags = ", ".join(f"--{f.replace('_', '-')}" for f in unused)
        raise InputError(f"{flags}: not used by {cfg.kind} profiles")


def new_profile(cfg: ProfileAddConfig) -> Profile:
    """Check everything about a profile to add before any key is asked for."""
    if not _NAME.match(cfg.name):
        raise InputError(
            f"profile name {cfg.name!r}: use letters, digits, '_', '.' and '-' "
            "(starting with a letter or digit), e.g. azure-gpt4o"
        )
    if cfg.name in load_profiles() and not cfg.force:
        raise InputError(f"profile {cfg.name!r} exists; pass --force to replace it")
    _check_kind_options(cfg)
    spec = KINDS[cfg.kind]
    url = cfg.base_url or spec.default_base_url
    if url is None:
        raise InputError(f"{cfg.kind} profiles need --base-url, e.g. --base-url {spec.example_url}")
    key = _key_source(cfg)
    if key == "keyring":
        _keyring_backend()
    return Profile(
        kind=cfg.kind,
        base_url=check_base_url(url, "--base-url", spec.example_url),
        model=cfg.model,
        api_version=cfg.api_version,
        deployment=cfg.deployment,
        key=key,
        api_key_env=cfg.api_key_env,
    )


def save_profile(name: str, profile: Profile, key: str | None = None) -> None:
    """Store `profile` (checked by `new_profile`) and, for keyring/file profiles, its key."""
    if profile.key in ("keyring", "file") and not (key or "").strip():
        raise InputError(f"profile {name!r}: no API key given")
    profiles = load_profiles()
    if name in profiles:
        _forget_key(name, profiles[name])
    if profile.key == "keyring":
        _keyring_call("store the key", "set_password", KEYRING_SERVICE, _user(name), key.strip())
    elif profile.key == "file":
        _write_key_file(key_file(name), key.strip())
    profiles[name] = profile
    _write_profiles(profiles)


def remove_profile(name: str) -> None:
    profiles = load_profiles()
    profile = get_profile(name)
    _forget_key(name, profile)
    del profiles[name]
    _write_profiles(profiles)


def _forget_key(name: str, profile: Profile) -> None:
    if profile.key == "file":
        key_file(name).unlink(missing_ok=True)
        return
    if profile.key != "keyring":
        return
    try:
        from keyring.errors import PasswordDeleteError

        with contextlib.suppress(PasswordDeleteError):  # already gone: nothing to forget
            _keyring_backend().delete_password(KEYRING_SERVICE, _user(name))
    except Exception as exc:  # no keyring here, or the backend failed: keep going, say so
        progress.warn(
            f"profile {name!r}: its key could not be deleted from the system keyring "
            f"({exc.__class__.__name__}); delete it there (service {KEYRING_SERVICE}, "
            f"user {_user(name)})"
        )


# -- keys --------------------------------------------------------------------------------------
def _user(name: str) -> str:
    return f"profile:{name}"


def _keyring_backend() -> Any:
    """The system keyring, or an error saying how to do without one."""
    try:
        import keyring
        from keyring.backends import fail
    except ImportError:
        raise MissingDependencyError(
            "keyring", "cloud", "the system keyring (profile keys)"
        ) from None
    backend = keyring.get_keyring()
    if isinstance(backend, fail.Keyring):
        raise InputError(
            "no system keyring is available here; use --api-key-env VAR to read the key from "
            "an environment variable, or --store-key-in-file"
        )
    return backend


def _keyring_call(what: str, method: str, *args: str) -> Any:
    backend = _keyring_backend()
    try:
        return getattr(backend, method)(*args)
    except Exception as exc:  # backends raise their own types (dbus, Keychain, ...)
        raise InputError(
            f"the system keyring failed to {what} ({exc.__class__.__name__}); "
            "use --api-key-env VAR or --store-key-in-file instead"
        ) from None


def _write_key_file(path: Path, key: str) -> None:
    """Write `key` to `path` with mode 600 from its first byte (folder mode 700)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    temp = path.with_name(f".{path.name}.tmp")
    temp.unlink(missing_ok=True)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (key + "\n").encode("utf-8"))
    finally:
        os.close(fd)
    os.replace(temp, path)


def _read_key_file(name: str) -> str:
    path = key_file(name)
    if not path.is_file():
        raise InputError(
            f"profile {name!r}: its key file {path} is missing; add the profile again with "
            f"slmforge profile add {name} ... --store-key-in-file --force"
        )
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise InputError(
            f"{path} is readable by other users (mode {mode:o}); run: chmod 600 {path}"
        )
    return path.read_text(encoding="utf-8").strip()


def resolve_key(name: str, profile: Profile) -> str:
    """The API key of a profile, from wherever the profile keeps it."""
    if profile.key == "none":
        return LOCAL_KEY
    if profile.key == "env":
        var = profile.api_key_env or ""
        value = os.environ.get(var, "").strip()
        if not value:
            raise InputError(
                f"profile {name!r} reads its key from the environment variable {var}, "
                f"which is not set; export {var}=... and run again"
            )
        return value
    if profile.key == "file":
        return _read_key_file(name)
    value = _keyring_call("read the key", "get_password", KEYRING_SERVICE, _user(name))
    if not value:
        raise InputError(
            f"profile {name!r}: no key in the system keyring; add it again with "
            f"slmforge profile add {name} ... --force"
        )
    return value


def describe_key(name: str, profile: Profile) -> str:
    """Where a profile's key is, for listings: never the key itself."""
    if profile.key == "env":
        state = "set" if os.environ.get(profile.api_key_env or "") else "not set"
        return f"env {profile.api_key_env} ({state})"
    if profile.key == "file":
        return f"file {key_file(name)}"
    return profile.key


def key_available(name: str, profile: Profile) -> bool | None:
    """Whether the key can be had without asking anything (None: the keyring is not asked,
    since a desktop keyring may pop up an unlock dialog)."""
    if profile.key == "env":
        return bool(os.environ.get(profile.api_key_env or ""))
    if profile.key == "file":
        return key_file(name).is_file()
    return True if profile.key == "none" else None
