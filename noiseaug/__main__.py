"""``python -m noiseaug`` and the ``noiseaug`` program.

A Ctrl-C or SIGTERM that arrives while Python is still importing the CLI
would print a traceback from deep inside an import: until a run installs its
own handlers (``signals.Stopper``), a signal ends the program at once with
128 + its number, as nothing has been written yet. ``_signal`` (the C module
under ``signal``) is used because it imports at once, so the window in which
Python's own handler still answers is as short as it can be.
"""

import _signal
import os


def _early(signum: int, frame: object) -> None:
    os._exit(128 + signum)


def main() -> None:
    for signum in (_signal.SIGINT, _signal.SIGTERM):
        _signal.signal(signum, _early)
    from .cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
