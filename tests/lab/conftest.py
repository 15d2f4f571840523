"""Every lab test gets the lab up first, whether or not it names the `lab` fixture: a test whose own
fixture reached a host before any test had asked for the lab ran against whatever an earlier run had
left (CI failed so when the bot-webhook test happened to run first)."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture(autouse=True)
def _lab_is_up(lab: Any) -> Any:
    return lab
