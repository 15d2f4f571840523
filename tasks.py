"""Invoke front end: `inv --list`, `inv --help restart-api`, `inv restart-api --host prod`.

Every task is a remediation that declares itself (remediations/<domain>/*.py): the collection is
built from the registry, flags and help from each class's `params`. `inv TASK` imports that task's
module alone (the registry's index, remediations/<domain>/__init__.py); --list, --help and
--complete import them all. Exit code: 0 when no host failed, 1 when one did, 2 for bad input
(nothing run), 3 when none failed but a step warned, 130/143 when interrupted. The lab's
development tasks are a separate collection: `inv -r lab --list`.
"""

import sys

from remediations.core import startup

startup.pause()  # the collector is off while the modules are imported; the engine turns it back on

from remediations import invoke_errors  # noqa: E402
from remediations.cli import collection  # noqa: E402

# Invoke turns bytecode writing off (no tasks.pyc beside a tasks file; tasks.py is read by now). Left
# off, a checkout's modules would be compiled from source on every `inv` until some other Python run
# imports them (0.13 s more for `inv restart-api --help` here). `python -B` or PYTHONDONTWRITEBYTECODE
# still keep it off.
if not sys.flags.dont_write_bytecode:
    sys.dont_write_bytecode = False

invoke_errors.install()  # Invoke's own parse errors: one line and exit 2, as every bad input
ns = collection()
