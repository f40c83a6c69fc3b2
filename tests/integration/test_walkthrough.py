"""Every command the README and the pages under docs/ show, run against a live stack: the docs
cannot rot.

Every ``$ `` command of every ``console`` block of a page is run with bash, in page order, in
one shell per stack (a variable set by one command is seen by the next), against a real
``ingest-producer`` and ``ingest-worker`` on free ports and the test Redis. Each answer must
have the documented shape: the same JSON keys, array lengths and value types as the output
shown under the command, and the same strings, except stream ids, timestamps and consumer
names (``<hostname>-<pid>``), which differ from run to run; an answer that is not JSON must be
the same text.

What the runner does for the commands a page uses to set things up:

* ``[VAR=value ...] make run`` is not run: the test starts the stack itself, with those
  variables, on an empty Redis (what ``make reset`` gives), and the commands after it go to
  that stack;
* ``make redis-cli ARGS='...'`` runs the module the target runs (``ingest_devtools.rediscli``,
  without the target's install step) against the test Redis, and ``uv run X`` runs ``X`` from
  the workspace's environment;
* ``localhost:8080`` and ``:9100`` become the test stack's ports.

What a test cannot run is listed in ``NOT_RUN`` with the reason; every entry must match a
shown command, so the list cannot outlive the docs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from tests.ports import free_port

if TYPE_CHECKING:
    from collections.abc import Iterator

    from redis.asyncio import Redis

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BIN = Path(sys.executable).parent

# Commands shown in the docs that no test runs, each with the reason.
NOT_RUN: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(r"\A(?:INGEST_CHAOS_SCALE=\S+ )?make (?:test|test-unit|chaos)\b"),
        "the test suite itself, or minutes of it",
    ),
    (
        re.compile(r"\A(?:docker |make up\b|cp \.env\.example )"),
        "Docker: CI has no engine, and the stack in compose.yaml is not the one under test",
    ),
    (re.compile(r"\Amake reset\b"), "the test starts every `make run` on an empty Redis"),
    (
        re.compile(r"\Amake cluster\b"),
        "a Redis Cluster in the foreground until Ctrl-C (tests/integration/test_localcluster.py)",
    ),
    (
        re.compile(r"--tls-cert |\AREDIS_URL=rediss://"),
        "needs certificates (tests/integration/test_tls.py makes some and runs TLS)",
    ),
    (re.compile(r"\A(?:npx |openapi-python-client )"), "third-party tools not installed here"),
)
STACK = re.compile(r"\A(?P<env>(?:[A-Z][A-Z0-9_]*=\S*\s+)*)make run\s*(?:#.*)?\Z")
DOCUMENTED_PORT = re.compile(r"\b(?:localhost|127\.0\.0\.1):8080\b")
DOCUMENTED_WORKER_PORT = re.compile(r"\b(?:localhost|127\.0\.0\.1):9100\b")
STREAM_ID = re.compile(r"\A\d+-\d+(?:@\S+)?\Z")
TIMESTAMP = re.compile(r"\A\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?Z\Z")
# A worker's consumer name is <hostname>-<pid>: the reader's differs from the docs'.
CONSUMER_NAME = re.compile(r"\A[A-Za-z0-9_.-]+-\d+\Z")
FIXED_DATE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}")
AUTHORS_ID = re.compile(r"\b\d{13}-\d+\b")
START_TIMEOUT_S = 20.0
COMMANDS_TIMEOUT_S = 60.0
# The walk-through's readings must share one rollup bucket (a minute) for its `null` rollup.
LATEST_START_IN_MINUTE_S = 45

# The commands the pages use to set things up, as the shell of the test runs them.
PRELUDE = r"""
make() {
  case "$1" in
    redis-cli) eval "python -m ingest_devtools.rediscli ${2#ARGS=}" ;;
    *) echo "make $*: not run by the docs test; list it in NOT_RUN" >&2; return 127 ;;
  esac
}
uv() {
  if [ "$1" != run ]; then echo "uv $1: not run by the docs test" >&2; return 127; fi
  shift; "$@"
}
"""


@dataclass(frozen=True, slots=True)
class Step:
    """One ``$`` command of a page and the output documented under it."""

    line: int
    command: str
    output: str


@dataclass(slots=True)
class Stack:
    """The commands of a page run against one stack, started with ``env``."""

    env: dict[str, str]
    steps: list[Step] = field(default_factory=list)


def steps(text: str) -> list[Step]:
    """Every ``$`` command in the ``console`` blocks of a Markdown text, in order.

    A block may be indented (inside a list item). A command goes on over the lines that follow
    while bash would wait for more (a trailing ``\\`` or an open quote); the lines after it, up
    to the next ``$`` or the end of the block, are its documented output.
    """
    found: list[Step] = []
    fence = re.compile(r"^(?P<indent> *)```console\n(?P<lines>.*?)^(?P=indent)```", re.M | re.S)
    for block in fence.finditer(text):
        indent = len(block["indent"])
        lines = [line[indent:] for line in block["lines"].splitlines()]
        line_no = text.count("\n", 0, block.start("lines")) + 1
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
            found.append(Step(line_no + start, command, "\n".join(output).strip()))
    return found


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


def not_run_because(command: str) -> str | None:
    """Why no test runs ``command`` (None: it is run)."""
    return next((reason for pattern, reason in NOT_RUN if pattern.search(command)), None)


def stacks(found: list[Step]) -> list[Stack]:
    """The commands to run, split at each ``make run``: each part gets a fresh stack with the
    variables set on that line. Parts with nothing to run are dropped."""
    parts = [Stack({})]
    for step in found:
        if match := STACK.match(step.command):
            assignments = shlex.split(match["env"])
            parts.append(Stack(dict(a.split("=", 1) for a in assignments)))
        elif not_run_because(step.command) is None:
            parts[-1].steps.append(step)
    return [part for part in parts if part.steps]


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


def page_name(page: Path) -> str:
    return str(page.relative_to(ROOT))


# --- the extraction itself -----------------------------------------------------------------

SAMPLE = """\
# x

```console
$ make run
...
banner
```

text

* a list item:

  ```console
  $ a=1
  $ curl -s x \\
      -d '[1,
           2]'
  {"ids":["1-0"]}
  ```

```console
$ echo "$a"
1
$ make test
$ INGEST_ROLLUPS='avg:1000' X=1 make run
$ echo b
b
```

```sh
$ not-this
```
"""


def test_every_command_is_found_with_its_continuations_and_output() -> None:
    found = [(s.command, s.output) for s in steps(SAMPLE)]

    assert found == [
        ("make run", "...\nbanner"),
        ("a=1", ""),
        ("curl -s x \\\n    -d '[1,\n         2]'", '{"ids":["1-0"]}'),
        ('echo "$a"', "1"),
        ("make test", ""),
        ("INGEST_ROLLUPS='avg:1000' X=1 make run", ""),
        ("echo b", "b"),
    ]
    assert [s.line for s in steps(SAMPLE)] == [4, 14, 15, 22, 24, 25, 26]


def test_each_make_run_starts_a_stack_with_its_variables_and_skipped_commands_are_left_out() -> (
    None
):
    parts = stacks(steps(SAMPLE))

    assert [(p.env, [s.command for s in p.steps]) for p in parts] == [
        ({}, ["a=1", "curl -s x \\\n    -d '[1,\n         2]'", 'echo "$a"']),
        ({"INGEST_ROLLUPS": "avg:1000", "X": "1"}, ["echo b"]),
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
    assert differences("204", "404")


@pytest.mark.parametrize("page", PAGES, ids=page_name)
def test_no_command_holds_a_fixed_date_or_an_id_from_the_authors_run(page: Path) -> None:
    found = steps(page.read_text(encoding="utf-8"))

    dated = [s.line for s in found if FIXED_DATE.search(s.command)]
    assert dated == [], "commands with a fixed date fail a day later (INGEST_RETENTION_MS)"
    ids = [s.line for s in found if AUTHORS_ID.search(s.command)]
    assert ids == [], "an id from the author's run is nobody else's: capture it into a variable"


def test_every_reason_not_to_run_a_command_matches_a_command_the_docs_show() -> None:
    shown = [s.command for page in PAGES for s in steps(page.read_text(encoding="utf-8"))]

    unused = [reason for pattern, reason in NOT_RUN if not any(pattern.search(c) for c in shown)]
    assert unused == []


def test_the_readme_and_the_pages_people_try_first_have_commands_that_run() -> None:
    runnable = {
        page_name(page): sum(len(p.steps) for p in stacks(steps(page.read_text(encoding="utf-8"))))
        for page in PAGES
    }

    assert runnable["README.md"] >= 5
    assert runnable["docs/agents.md"] >= 8
    assert runnable["docs/reading-data.md"] >= 10


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


def run_commands(commands: list[str], workdir: Path, env: dict[str, str]) -> list[str]:
    """Run ``commands`` in one bash, in order; the output (stdout + stderr) of each."""
    outputs = [workdir / f"out-{i}.txt" for i in range(len(commands))]
    script = PRELUDE + "".join(
        f"{{\n{c}\n}} >{o} 2>&1\n" for c, o in zip(commands, outputs, strict=True)
    )
    subprocess.run(
        ["bash", "-c", script], cwd=workdir, env=env, check=False, timeout=COMMANDS_TIMEOUT_S
    )
    return [o.read_text(errors="replace").strip() if o.exists() else "" for o in outputs]


PAGES_WITH_COMMANDS = [p for p in PAGES if stacks(steps(p.read_text(encoding="utf-8")))]


@pytest.mark.parametrize("page", PAGES_WITH_COMMANDS, ids=page_name)
async def test_every_command_of_the_page_answers_as_documented(
    page: Path, redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    if shutil.which("curl") is None:
        pytest.fail("the docs use curl: install it (apt-get install curl; .ci/run does)")
    problems: list[str] = []
    text = await asyncio.to_thread(page.read_text, encoding="utf-8")
    for i, stack in enumerate(stacks(steps(text))):
        if i:
            await redis.flushall()
        workdir = tmp_path / f"stack-{i}"
        workdir.mkdir()
        outputs = await run_against_a_stack(stack, redis_url, workdir)
        problems += [
            f"{page_name(page)}:{step.line}: {step.command.splitlines()[0]}\n    got: {out}\n    "
            + "\n    ".join(diff)
            for step, out in zip(stack.steps, outputs, strict=True)
            if (diff := differences(parsed(step.output), parsed(out)))
        ]
    assert problems == [], "\n".join(problems)


async def run_against_a_stack(stack: Stack, redis_url: str, workdir: Path) -> list[str]:
    """Start a producer and a worker with the stack's variables, run its commands in one
    shell: the output of each."""
    port, worker_port = free_port(), free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("INGEST_", "REDIS_"))}
    env = (
        base
        | stack.env
        | {
            "REDIS_URL": redis_url,
            "INGEST_HTTP_PORT": str(port),
            "INGEST_WORKER_HTTP_PORT": str(worker_port),
            "INGEST_LOG_FORMAT": "json",
        }
    )
    producer_log, worker_log = workdir / "producer.log", workdir / "worker.log"
    with (
        service("ingest-worker", env, worker_log) as worker,
        service("ingest-producer", env, producer_log) as producer,
    ):
        await wait_until_up(f"http://127.0.0.1:{port}", worker_log, [worker, producer])
        second = time.time() % 60
        if second > LATEST_START_IN_MINUTE_S:  # so that no rollup bucket closes midway
            await asyncio.sleep(61 - second)
        commands = [
            DOCUMENTED_WORKER_PORT.sub(
                f"127.0.0.1:{worker_port}", DOCUMENTED_PORT.sub(f"127.0.0.1:{port}", s.command)
            )
            for s in stack.steps
        ]
        shell = env | {"PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}"}
        return await asyncio.to_thread(run_commands, commands, workdir, shell)
