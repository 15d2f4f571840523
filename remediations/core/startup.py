"""`inv`'s start-up: Python's cyclic garbage collector is paused while the modules are imported.

Start-up creates a few hundred thousand objects that live as long as the process (modules, classes,
functions; paramiko and cryptography are most of them) and almost no garbage. The collector, left
on, walks all of them again and again while they are made, and once more at exit: a quarter of the
CPU of a one-host `inv restart-api` on the 2-core machine (README, Start-up). `tasks.py` calls
`pause()` first; the engine calls `done()` once the run's modules are imported (`Engine.run`, after
the SSH client): what exists then is moved out of the collector's sight for good (`gc.freeze`: it
is never garbage) and collection is back on for the run itself, so a long run or a 1,000-host
fan-out collects its own cycles as before. Only a pause taken here is ended here: a program that
turned the collector off itself is left as it was.
"""

from __future__ import annotations

import gc

_paused = False


def pause() -> None:
    """Turn the collector off until `done()` (a no-op when it is already off)."""
    global _paused
    if gc.isenabled():
        gc.disable()
        _paused = True


def done() -> None:
    """End the pause taken by `pause()`: freeze what exists and turn the collector back on."""
    global _paused
    if _paused:
        _paused = False
        gc.freeze()
        gc.enable()
