"""Runs peftlab commands in forked children of one warm process, for the random-kill tests: importing torch and
transformers takes seconds, the commands on tiny models a fraction of one, so a fresh process per command would
put every random kill point inside the imports.

    python command_server.py LOG    (then one JSON argv per line on stdin)

Prints ``ready``, then for each command the child's pid as soon as it runs and, when it ends, a JSON line
``{"pid": ..., "code": ...}`` (the exit code, or minus the signal that ended it). The child's output goes to LOG.
"""

from __future__ import annotations

import json
import os
import sys

import peftlab.bench.report  # noqa: F401  (everything a command imports, imported once before the forks)
import peftlab.cli
import peftlab.interop  # noqa: F401
import peftlab.train  # noqa: F401


def run_child(argv: list[str], log_path: str) -> None:
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    code = 1
    try:
        code = peftlab.cli.main(argv)
    except KeyboardInterrupt:  # SIGINT before the command set its handlers, as Python exits on it
        code = 130
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main() -> None:
    log_path = sys.argv[1]
    print("ready", flush=True)
    for line in sys.stdin:
        pid = os.fork()
        if pid == 0:
            run_child(json.loads(line), log_path)
        print(pid, flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"pid": pid, "code": os.waitstatus_to_exitcode(status)}), flush=True)


if __name__ == "__main__":
    main()
