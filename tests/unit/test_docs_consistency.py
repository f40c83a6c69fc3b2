"""The README, `.env.example`, the settings code and compose.yaml agree with each other.

Every environment variable the settings code reads has a row in the README's Settings table
and a line in `.env.example`, and neither names one the code does not read.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from ingest_shared.settings import load_settings

if TYPE_CHECKING:
    from collections.abc import Iterator

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
ENV_NAME = re.compile(r"\A(?:REDIS_URL|INGEST_[A-Z0-9_]+)\Z")


class RecordingEnv(dict[str, str]):
    """An empty environment that remembers every variable name it was asked about."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: set[str] = set()

    def get(self, key: str, default: object = None) -> object:  # type: ignore[override]
        self.asked.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            self.asked.add(key)
        return super().__contains__(key)

    def __iter__(self) -> Iterator[str]:
        raise AssertionError("settings must look variables up by name")


def names_the_code_reads() -> set[str]:
    env = RecordingEnv()
    load_settings(env)
    return env.asked


def section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.M | re.S)
    assert match is not None, f"README has no '## {title}' section"
    return match[1]


def readme_table_names() -> list[str]:
    """The variables in the first column of the README's Settings table."""
    names: list[str] = []
    for line in section("Settings").splitlines():
        if line.startswith("| `"):
            first_cell = line.split("|")[1]
            names += re.findall(r"`([A-Z][A-Z0-9_]*)`", first_cell)
    return names


def env_example_names() -> list[str]:
    """``NAME=`` lines of .env.example, commented out or not."""
    text = (ROOT / ".env.example").read_text(encoding="utf-8")
    return re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", text, re.M)


def test_the_settings_code_reads_only_documented_variables_and_the_docs_name_no_others() -> None:
    code = names_the_code_reads()
    table, example = readme_table_names(), env_example_names()

    assert all(ENV_NAME.match(name) for name in code), code
    missing_in_table, unknown_in_table = sorted(code - set(table)), sorted(set(table) - code)
    missing_in_example, unknown_in_example = (
        sorted(code - set(example)),
        sorted(set(example) - code),
    )
    assert not missing_in_table, f"read by the settings code, not in the README: {missing_in_table}"
    assert not unknown_in_table, f"in the README Settings table, never read: {unknown_in_table}"
    assert not missing_in_example, f"read by the code, not in .env.example: {missing_in_example}"
    assert not unknown_in_example, f"in .env.example, never read: {unknown_in_example}"


def test_no_variable_is_listed_twice() -> None:
    for where, names in (("README", readme_table_names()), (".env", env_example_names())):
        assert [n for n, count in Counter(names).items() if count > 1] == [], where


def test_the_redis_image_is_the_same_in_compose_the_tests_and_the_readme() -> None:
    compose = (ROOT / "compose.yaml").read_text(encoding="utf-8")
    conftest = (ROOT / "tests" / "conftest.py").read_text(encoding="utf-8")
    images = set(re.findall(r"^\s*image:\s*(redis:\S+)", compose, re.M))

    assert len(images) == 1
    assert set(re.findall(r'^REDIS_IMAGE = "(redis:[^"]+)"', conftest, re.M)) == images
    assert set(re.findall(r"`(redis:[0-9][^`]*)`", README)) == images
