"""``python -m noiseaug``: the same as the ``noiseaug`` command."""

from .cli import main

main()
