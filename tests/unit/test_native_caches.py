"""oneDNN's and ideep's shape caches are capped unless the user set them (native_caches.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from slmforge.native_caches import CACHE_ENTRIES, bound_native_caches

NAMES = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")


def test_caps_both_caches(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in NAMES:
        monkeypatch.delenv(name, raising=False)
    bound_native_caches()
    assert [os.environ[name] for name in NAMES] == [str(CACHE_ENTRIES)] * 2


def test_a_users_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "1024")
    monkeypatch.delenv("LRU_CACHE_CAPACITY", raising=False)
    bound_native_caches()
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "1024"
    assert os.environ["LRU_CACHE_CAPACITY"] == str(CACHE_ENTRIES)


def test_the_cli_caps_them_before_any_verb_runs() -> None:
    """The CLI's entry point sets them in its own process (a verb's torchrun workers inherit)."""
    env = {k: v for k, v in os.environ.items() if k not in NAMES}
    code = (
        "import os, sys; from slmforge.cli import main as m\n"
        "sys.argv = ['slmforge', '--version']\n"
        "try:\n    m.main()\nexcept SystemExit:\n    pass\n"
        "print(*(os.environ.get(n) for n in"
        " ('ONEDNN_PRIMITIVE_CACHE_CAPACITY', 'LRU_CACHE_CAPACITY')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == f"{CACHE_ENTRIES} {CACHE_ENTRIES}"
