"""The options of one run (check, diff, fan-out, rollout, lock wait) and their defaults, in one place."""

from __future__ import annotations

from dataclasses import dataclass, field

from remediations.core.errors import UsageError

CONNECT_TIMEOUT = 10.0  # seconds to open one SSH connection (TCP, key exchange, authentication)
DEFAULT_PARALLEL = 10
DEFAULT_LOCK_WAIT = 60.0
DEFAULT_DEADLINE = 1800.0  # seconds a remediation may take on one host, unless it says otherwise


@dataclass(frozen=True)
class MaxFail:
    """Past how many failed hosts the remaining batches are not started: a count or a percentage."""

    count: int | None = None
    percent: float | None = None

    @classmethod
    def parse(cls, text: str | None) -> MaxFail:
        if text is None or str(text).strip() == "":
            return cls()
        text = str(text).strip()
        try:
            if text.endswith("%"):
                percent = float(text[:-1])
                if not 0 <= percent <= 100:
                    raise ValueError
                return cls(percent=percent)
            count = int(text)
            if count < 0:
                raise ValueError
            return cls(count=count)
        except ValueError:
            raise UsageError(
                f"--max-fail {text!r}: give a count (0 stops at the first failure) or a percentage "
                "such as 25%"
            ) from None

    def exceeded(self, failed: int, total: int) -> bool:
        if self.count is not None:
            return failed > self.count
        if self.percent is not None and total:
            return failed * 100.0 / total > self.percent
        return False


@dataclass(frozen=True)
class RunOptions:
    check: bool = False
    diff: bool = False
    parallel: int = DEFAULT_PARALLEL
    serial: int | None = None
    max_fail: MaxFail = field(default_factory=MaxFail)
    lock_wait: float = DEFAULT_LOCK_WAIT
    connect_timeout: float = CONNECT_TIMEOUT

    def __post_init__(self) -> None:
        if self.parallel < 1:
            raise UsageError(f"--parallel {self.parallel}: give at least 1")
        if self.serial is not None and self.serial < 1:
            raise UsageError(f"--serial {self.serial}: give at least 1 (or leave it out)")
        if self.lock_wait < 0:
            raise UsageError(f"--lock-wait {self.lock_wait}: give a number of seconds, 0 or more")


