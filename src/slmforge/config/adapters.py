"""`--adapter NAME=DIR` options of the build commands (optimize, its GGUF export): parsing and the
checks every build makes of the names."""

from __future__ import annotations

from pathlib import Path


def adapter_spec(spec: str) -> tuple[str, Path]:
    """`NAME=DIR` or `DIR` -> (name, folder); the name defaults to the folder's name."""
    name, sep, path = spec.partition("=")
    if not sep:
        folder = Path(spec)
        return folder.resolve().name, folder
    return name.strip(), Path(path)


def checked_adapter_names(specs: list[str]) -> list[str]:
    """The names of `specs`, each non-empty and unique (raises ValueError naming the problem)."""
    names = [adapter_spec(spec)[0] for spec in specs]
    if any(not name for name in names):
        raise ValueError("each adapter is NAME=DIR or DIR; the name must not be empty")
    if len(set(names)) != len(names):
        raise ValueError(f"adapter names must be unique, got {', '.join(names)}")
    return names
