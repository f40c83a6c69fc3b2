"""The README's walk-through and docs/agents.md, command by command, against a live stack:
they cannot rot.

Every ``$ `` command of every ``console`` block in the *Walk-through* section is run with bash
(one shell, in order, so a variable set by one command is seen by the next) against a real
``ingest-producer`` and ``ingest-worker`` on a free port; ``make run`` itself is skipped, the
test starts the stack. Each answer must have the documented shape: the same JSON keys, array
lengths and value types as the output pasted under the command, and the same strings, except
stream ids, timestamps and consumer names (``<hostname>-<pid>``), which differ from run to run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from tests.ports import free_port

if TYPE_CHECKING:
    from collections.abc import Iterator

    from redis.asyncio import Redis

README = Path(__file__).resolve().parents[2] / "README.md"
AGENTS_PAGE = README.parent / "docs" / "agents.md"
SECTION = "Walk-through"
BIN = Path(sys.executable).parent
SKIPPED = ("make run",)  # the test starts the stack itself
DOCUMENTED_PORT = re.compile(r"\b(?:localhost|127\.0\.0\.1):8080\b")
STREAM_ID = re.compile(r"\A\d+-\d+\Z")
TIMESTAMP = re.compile(r"\A\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?Z\Z")
# A worker's consumer name is <hostname>-<pid>: the reader's differs from the README's.
CONSUMER_NAME = re.compile(r"\A[A-Za-z0-9_.-]+-\d+\Z")
FIXED_DATE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}")
START_TIMEOUT_S = 20.0
COMMANDS_TIMEOUT_S = 60.0
# The walk-through's readings must share one rollup bucket (a minute) for its `null` rollup.
LATEST_START_IN_MINUTE_S = 45


@dataclass(frozen=True, slots=True)
class Step:
    """One ``$`` command of the README and the output documented under it."""

    line: int
    command: str
    output: str


def section(text: str, title: str | None) -> tuple[int, str]:
    """The ``## title`` section of a Markdown text (None: all of it), and the line number it
    starts at."""
    if title is None:
        return 0, text
    match = re.search(rf"^## {re.escape(title)}\n(?P<body>.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match is not None, f"README has no '## {title}' section"
    return text.count("\n", 0, match.start()) + 1, match["body"]


def _incomplete(command: str) -> bool:
    """True if bash would wait for more input: a trailing backslash or an open quote."""
    if command.endswith("\\"):
        return True
    check = subprocess.run(
        ["bash", "-n"], input=command, capture_output=True, text=True, check=False
    )
    return check.returncode != 0 and (
        "unexpected EOF" in check.stderr or "end of file" in check.stderr
    )


def steps(text: str, title: str | None = SECTION) -> list[Step]:
    """Every ``$`` command in the ``console`` blocks of section ``title``, in order.

    A command goes on over the lines that follow while bash would wait for more (a trailing
    ``\\`` or an open quote); the lines after it, up to the next ``$`` or the end of the
    block, are its documented output.
    """
    first_line, body = section(text, title)
    found: list[Step] = []
    for block in re.finditer(r"^```console\n(?P<lines>.*?)^```", body, re.M | re.S):
        lines = block["lines"].splitlines()
        line_no = first_line + body.count("\n", 0, block.start("lines"))
        i = 0
        while i < len(lines):
            if not lines[i].startswith("$ "):
                i += 1
                continue
            start = i
            command = lines[i][2:]
            while _incomplete(command) and i + 1 < len(lines):
                i += 1
                command += "\n" + lines[i]
            i += 1
            output: list[str] = []
            while i < len(lines) and not lines[i].startswith("$ "):
                output.append(lines[i])
                i += 1
            found.append(Step(line_no + start + 1, command, "\n".join(output).strip()))
    return found


def differences(documented: object, actual: object, where: str = "$") -> list[str]:
    """Where ``actual`` does not have the shape of ``documented`` (empty: it does)."""
    if isinstance(documented, dict):
        if not isinstance(actual, dict) or set(documented) != set(actual):
            return [f"{where}: {actual!r}, documented with the keys {sorted(documented)}"]
        pairs = [(documented[k], actual[k], f"{where}.{k}") for k in documented]
    elif isinstance(documented, list):
        if not isinstance(actual, list) or len(actual) != len(documented):
            return [f"{where}: {actual!r}, documented as a list of {len(documented)}"]
        pairs = [
            (d, a, f"{where}[{i}]") for i, (d, a) in enumerate(zip(documented, actual, strict=True))
        ]
    else:
        return (
            []
            if _same_value(documented, actual)
            else [f"{where}: {actual!r}, documented {documented!r}"]
        )
    return [problem for d, a, w in pairs for problem in differences(d, a, w)]


def _same_value(documented: object, actual: object) -> bool:
    """Strings equal but for ids, times and consumer names; numbers of one type; the rest equal."""
    if isinstance(documented, str) and isinstance(actual, str):
        varying = (STREAM_ID, TIMESTAMP, CONSUMER_NAME)
        return documented == actual or any(p.match(documented) and p.match(actual) for p in varying)
    if isinstance(documented, bool) or documented is None:
        return actual is documented
    # int and float are different shapes; their values may differ.
    return type(documented) is type(actual)


def parsed(text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


# --- the extraction itself -----------------------------------------------------------------

SAMPLE = """\
# x

## Walk-through

```console
$ make run
...
banner
```

text

```console
$ a=1
$ curl -s x \\
    -d '[1,
         2]'
{"ids":["1-0"]}
$ echo "$a"
1
```

## Next

```console
$ not-this
```
"""


def test_every_command_of_the_section_is_found_with_its_continuations_and_output() -> None:
    found = [(s.command, s.output) for s in steps(SAMPLE)]

    assert found == [
        ("make run", "...\nbanner"),
        ("a=1", ""),
        ("curl -s x \\\n    -d '[1,\n         2]'", '{"ids":["1-0"]}'),
        ('echo "$a"', "1"),
    ]


def test_shapes_allow_other_ids_and_times_but_nothing_else() -> None:
    documented = {"id": "1-0", "at": "2026-01-01T00:00:00Z", "n": 1, "v": 1.5, "ok": True}

    same_shape = {"id": "9-3", "at": "2030-05-05T05:05:05.5Z", "n": 7, "v": 0.5, "ok": True}
    assert differences(documented, same_shape) == []
    assert differences(documented, same_shape | {"n": 1.5})
    assert differences(documented, same_shape | {"ok": False})
    assert differences(documented, same_shape | {"id": "x"})
    assert differences(documented, {**same_shape, "extra": 1})
    assert differences([None], [{"timestampMs": 1, "value": 2.0}])


def test_the_walkthrough_has_commands_and_no_fixed_dates() -> None:
    found = [s for s in steps(README.read_text(encoding="utf-8")) if s.command not in SKIPPED]

    assert len(found) >= 5
    dated = [s.line for s in found if FIXED_DATE.search(s.command)]
    assert dated == [], "commands with a fixed date fail a day later (INGEST_RETENTION_MS)"


# --- against a live stack ------------------------------------------------------------------


@contextlib.contextmanager
def service(name: str, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A console script of the workspace; stopped (then killed) at the end."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(BIN / name)], env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
        process.wait()


async def wait_until_up(
    base_url: str, worker_log: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    """Like `make run` before its banner: /ready answers 200 and the worker has started."""
    deadline = time.monotonic() + START_TIMEOUT_S
    async with httpx.AsyncClient(base_url=base_url, timeout=2) as http:
        while True:
            assert all(p.poll() is None for p in processes), "a service exited at start"
            with contextlib.suppress(httpx.TransportError):
                ready = (await http.get("/ready")).status_code == 200
                if ready and b"worker_started" in await asyncio.to_thread(worker_log.read_bytes):
                    return
            if time.monotonic() > deadline:
                pytest.fail(f"the stack was not up within {START_TIMEOUT_S:.0f}s")
            await asyncio.sleep(0.1)


def run_commands(commands: list[str], workdir: Path) -> list[str]:
    """Run ``commands`` in one bash, in order; the output (stdout + stderr) of each."""
    outputs = [workdir / f"out-{i}.txt" for i in range(len(commands))]
    script = "".join(f"{{\n{c}\n}} >{o} 2>&1\n" for c, o in zip(commands, outputs, strict=True))
    subprocess.run(["bash", "-c", script], cwd=workdir, check=False, timeout=COMMANDS_TIMEOUT_S)
    return [o.read_text(errors="replace").strip() if o.exists() else "" for o in outputs]


async def test_every_walkthrough_command_answers_as_documented(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    walk = [s for s in steps(README.read_text(encoding="utf-8")) if s.command not in SKIPPED]
    problems = await documented_problems("README.md", walk, redis_url, tmp_path)
    assert problems == [], "\n".join(problems)


async def test_every_agents_page_command_answers_as_documented(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    walk = steps(AGENTS_PAGE.read_text(encoding="utf-8"), None)
    assert len(walk) >= 8
    assert [s.line for s in walk if FIXED_DATE.search(s.command)] == []
    problems = await documented_problems("docs/agents.md", walk, redis_url, tmp_path)
    assert problems == [], "\n".join(problems)


async def documented_problems(
    name: str, walk: list[Step], redis_url: str, tmp_path: Path
) -> list[str]:
    """Run ``walk`` (the ``$`` commands of the page ``name``) against a live stack: where an
    answer does not have the documented shape."""
    if shutil.which("curl") is None:
        pytest.fail("the docs use curl: install it (apt-get install curl; .ci/run does)")
    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("INGEST_", "REDIS_"))}
    env = base | {
        "REDIS_URL": redis_url,
        "INGEST_HTTP_PORT": str(port),
        "INGEST_WORKER_HTTP_PORT": str(free_port()),
        "INGEST_LOG_FORMAT": "json",
    }
    producer_log, worker_log = tmp_path / "producer.log", tmp_path / "worker.log"
    with (
        service("ingest-worker", env, worker_log) as worker,
        service("ingest-producer", env, producer_log) as producer,
    ):
        await wait_until_up(f"http://127.0.0.1:{port}", worker_log, [worker, producer])
        second = time.time() % 60
        if second > LATEST_START_IN_MINUTE_S:  # so that no rollup bucket closes midway
            await asyncio.sleep(61 - second)
        commands = [DOCUMENTED_PORT.sub(f"127.0.0.1:{port}", s.command) for s in walk]
        outputs = await asyncio.to_thread(run_commands, commands, tmp_path)

    return [
        f"{name}:{step.line}: {step.command.splitlines()[0]}\n    got: {out}\n    "
        + "\n    ".join(diff)
        for step, out in zip(walk, outputs, strict=True)
        if (diff := differences(parsed(step.output), parsed(out)))
    ]
