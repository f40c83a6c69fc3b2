"""The docs, `.env.example`, the settings code and compose.yaml agree with each other.

Every environment variable the settings code reads has a row in the Settings table of
docs/settings.md and a line in `.env.example`, and neither names one the code does not read.
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
SETTINGS_PAGE = ROOT / "docs" / "settings.md"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
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


def settings_table() -> str:
    """The table of docs/settings.md: its lines that start with ``|``."""
    text = SETTINGS_PAGE.read_text(encoding="utf-8")
    assert text.startswith("# Settings\n"), f"{SETTINGS_PAGE} is not the Settings page"
    return "\n".join(line for line in text.splitlines() if line.startswith("|"))


def settings_table_names() -> list[str]:
    """The variables in the first column of the Settings table (docs/settings.md)."""
    names: list[str] = []
    for line in settings_table().splitlines():
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
    table, example = settings_table_names(), env_example_names()

    assert all(ENV_NAME.match(name) for name in code), code
    missing_in_table, unknown_in_table = sorted(code - set(table)), sorted(set(table) - code)
    missing_in_example, unknown_in_example = (
        sorted(code - set(example)),
        sorted(set(example) - code),
    )
    assert not missing_in_table, f"read by the code, not in docs/settings.md: {missing_in_table}"
    assert not unknown_in_table, f"in docs/settings.md, never read: {unknown_in_table}"
    assert not missing_in_example, f"read by the code, not in .env.example: {missing_in_example}"
    assert not unknown_in_example, f"in .env.example, never read: {unknown_in_example}"


def test_no_variable_is_listed_twice() -> None:
    for where, names in (("settings.md", settings_table_names()), (".env", env_example_names())):
        assert [n for n, count in Counter(names).items() if count > 1] == [], where


def test_the_redis_image_is_the_same_in_compose_the_tests_and_the_docs() -> None:
    compose = (ROOT / "compose.yaml").read_text(encoding="utf-8")
    conftest = (ROOT / "tests" / "conftest.py").read_text(encoding="utf-8")
    images = set(re.findall(r"^\s*image:\s*(redis:\S+)", compose, re.M))

    assert len(images) == 1
    assert set(re.findall(r'^REDIS_IMAGE = "(redis:[^"]+)"', conftest, re.M)) == images
    for page in DOCS:
        named = set(re.findall(r"`(redis:[0-9][^`]*)`", page.read_text(encoding="utf-8")))
        assert named <= images, page
    readme = DOCS[0].read_text(encoding="utf-8")
    assert set(re.findall(r"`(redis:[0-9][^`]*)`", readme)) == images
