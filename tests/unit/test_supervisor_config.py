"""The supervisor's small parts: `.env` parsing and masking credentials in a Redis URL."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest_devtools.supervisor import StartError, mask_url, read_dotenv

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        ("redis://user:secret@host:6380/1", "redis://user:***@host:6380/1"),
        ("rediss://:secret@host:6380/0", "rediss://:***@host:6380/0"),
        ("redis://secret@host/0", "redis://***@host/0"),
        ("unix:///run/redis.sock?db=0&password=secret", "unix:///run/redis.sock?db=0&password=***"),
    ],
)
def test_credentials_are_masked(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_dotenv_reads_names_values_quotes_exports_and_skips_comments(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        "# comment\n\nA=1\nexport B = two words\nC='quoted # not a comment'\n"
        'D="x"\nE=value # a comment\nF=\n# G=commented out\n'
    )

    assert read_dotenv(env_file) == {
        "A": "1",
        "B": "two words",
        "C": "quoted # not a comment",
        "D": "x",
        "E": "value",
        "F": "",
    }


def test_a_line_that_is_not_name_equals_value_is_named(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("A=1\nnot a setting\n")

    with pytest.raises(StartError, match=r"\.env:2: expected NAME=value"):
        read_dotenv(env_file)


def test_the_example_env_file_parses_to_nothing_set() -> None:
    # Copying .env.example to .env must change nothing: every line is commented out.
    assert read_dotenv(ROOT / ".env.example") == {}
