"""`make redis-cli`: the embedded Redis Stack's own `redis-cli`, runnable from a fresh clone.

The bundled binary may need OpenSSL 1.1 from the library path the embedded server uses (see
``localredis``), so it is run with that environment. It connects where `make run` puts Redis:
``REDIS_URL`` (the environment, then ``.env``) when set, else the embedded server on
127.0.0.1:6379. Arguments go to `redis-cli` as they are (`-u`/`-h`/`-p` given: used instead).
"""

from __future__ import annotations

import os
import subprocess
import sys

from ingest_devtools.localredis import cli_binary, embedded_available, find_repo_root, server_env
from ingest_devtools.supervisor import DEFAULT_REDIS_PORT, StartError, read_dotenv

_WHERE_FLAGS = ("-u", "-h", "-p", "-s")


def command(args: list[str], env: dict[str, str]) -> list[str]:
    """The `redis-cli` command line for ``args``, pointed at the pipeline's Redis unless
    ``args`` say where."""
    if any(arg in _WHERE_FLAGS for arg in args):
        return [str(cli_binary()), *args]
    url = env.get("REDIS_URL", "").strip()
    where = ["-u", url] if url else ["-p", str(DEFAULT_REDIS_PORT)]
    return [str(cli_binary()), *where, *args]


def main(argv: list[str] | None = None) -> int:
    if not embedded_available():
        print("redis-cli: no embedded Redis here; use your own redis-cli", file=sys.stderr)
        return 2
    env = dict(os.environ)
    root = find_repo_root()
    dotenv = None if root is None else root / ".env"
    if "REDIS_URL" not in env and dotenv is not None and dotenv.is_file():
        try:
            env.setdefault("REDIS_URL", read_dotenv(dotenv).get("REDIS_URL", ""))
        except StartError as exc:
            print(f"redis-cli: {exc}", file=sys.stderr)
            return 2
    args = sys.argv[1:] if argv is None else argv
    cli = command(args, env)
    try:
        return subprocess.call(cli, env=server_env())
    except KeyboardInterrupt:  # an interactive session ended with Ctrl-C
        return 130


if __name__ == "__main__":
    sys.exit(main())
