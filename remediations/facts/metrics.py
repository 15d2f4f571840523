"""Prometheus metrics held to thresholds: the rules a `health_probes` entry of kind `metrics` declares,
and their verdict on a scrape of the endpoint (fetched on the host by the health facts command).

A rule is `SELECTOR OP NUMBER`, as in a PromQL comparison: `inbound_queue_depth > 1000`,
`webhook_processing_lag_seconds{quantile="0.99"} >= 30`, `up{job=~"api|worker"} == 0`. The selector
is a sample name (what the endpoint prints, `_total` / `_bucket` suffixes included) and label
matchers (`=`, `!=`, `=~`, `!~`; a regex matches the whole value, as in PromQL). A rule is breached
when any matching sample compares true. The exposition text is read with prometheus_client's own
parser; nothing here reads it with a regular expression.
"""

from __future__ import annotations

import base64
import binascii
import math
import operator
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from remediations.core.errors import UsageError
from remediations.core.labels import OPS, Matcher
from remediations.core.validate import shown
from remediations.facts.sections import MARK

MAX_RULE_LENGTH = 500
MAX_BODY_BYTES = 8 * 1024 * 1024  # what the host sends of one scrape; more is cut and said so
METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
COMPARISONS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, "==": operator.eq, "!=": operator.ne,
    ">": operator.gt, "<": operator.lt,
}  # fmt: skip
MATCH_OPS = OPS
GREEN, YELLOW, RED = "green", "yellow", "red"


@dataclass(frozen=True)
class Rule:
    """One threshold: the samples it selects, the comparison, and the colour when it holds."""

    name: str
    matchers: tuple[Matcher, ...]
    op: str
    threshold: float
    colour: str  # yellow | red

    @property
    def selector(self) -> str:
        inside = ",".join(str(m) for m in self.matchers)
        return f"{self.name}{{{inside}}}" if inside else self.name

    def __str__(self) -> str:
        return f"{self.selector} {self.op} {self.threshold:g}"

    def selects(self, name: str, labels: Mapping[str, str]) -> bool:
        return name == self.name and all(m.matches(labels) for m in self.matchers)


def parse_rule(text: object, colour: str, where: str) -> Rule:
    """`SELECTOR OP NUMBER`, or UsageError naming the rule and what is wrong."""
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_RULE_LENGTH or _CONTROL.search(text):
        raise UsageError(f"{where}: rule {shown(text)}: give one line such as 'inbound_queue_depth > 1000'")
    reader = _Reader(text.strip(), f"{where}: rule {shown(text)}")
    name = reader.take(METRIC_NAME, "a metric name")
    matchers = reader.matchers() if reader.peek("{") else ()
    op = reader.comparison()
    number = reader.rest()
    try:
        threshold = float(number)
    except ValueError:
        raise reader.error(f"{shown(number)} is not a number") from None
    if not math.isfinite(threshold):
        raise reader.error("the threshold must be a finite number")
    return Rule(name, matchers, op, threshold, colour)


class _Reader:
    """A cursor over one rule's text."""

    def __init__(self, text: str, where: str) -> None:
        self.text, self.at, self.where = text, 0, where

    def error(self, why: str) -> UsageError:
        return UsageError(f"{self.where}: {why} (e.g. 'queue_depth{{queue=\"in\"}} > 1000')")

    def skip_space(self) -> None:
        while self.at < len(self.text) and self.text[self.at] == " ":
            self.at += 1

    def peek(self, what: str) -> bool:
        self.skip_space()
        return self.text.startswith(what, self.at)

    def take(self, pattern: re.Pattern[str], what: str) -> str:
        self.skip_space()
        found = pattern.match(self.text, self.at)
        if not found:
            raise self.error(f"expected {what} at {shown(self.text[self.at:self.at + 20])}")
        self.at = found.end()
        return found.group(0)

    def matchers(self) -> tuple[Matcher, ...]:
        self.at += 1  # the {
        found: list[Matcher] = []
        while not self.peek("}"):
            if found:
                if not self.peek(","):
                    raise self.error("label matchers are separated by ','")
                self.at += 1
                if self.peek("}"):
                    break
            label = self.take(LABEL_NAME, "a label name")
            self.skip_space()
            op = next((o for o in MATCH_OPS if self.text.startswith(o, self.at)), None)
            if op is None:
                raise self.error(f"label {label}: expected one of = != =~ !~")
            self.at += len(op)
            value = self.quoted()
            if op in ("=~", "!~"):
                try:
                    re.compile(value)
                except re.error as exc:
                    raise self.error(f"label {label}: bad regex: {exc}") from None
            found.append(Matcher(label, op, value))
        self.at += 1  # the }
        return tuple(found)

    def quoted(self) -> str:
        if not self.peek('"'):
            raise self.error('a label value is given in double quotes')
        self.at += 1
        out: list[str] = []
        while self.at < len(self.text):
            char = self.text[self.at]
            self.at += 1
            if char == '"':
                return "".join(out)
            if char == "\\" and self.at < len(self.text):
                nxt = self.text[self.at]
                self.at += 1
                out.append({"n": "\n", "\\": "\\", '"': '"'}.get(nxt, "\\" + nxt))
            else:
                out.append(char)
        raise self.error("a label value's quote is not closed")

    def comparison(self) -> str:
        self.skip_space()
        for op in COMPARISONS:
            if self.text.startswith(op, self.at):
                self.at += len(op)
                return op
        raise self.error("expected a comparison: > >= < <= == !=")

    def rest(self) -> str:
        self.skip_space()
        return self.text[self.at :].strip()


def parse_rules(item: Mapping[str, object], where: str) -> tuple[Rule, ...]:
    """The `red:` and `yellow:` rules of one metrics probe (a rule or a list of rules each)."""
    rules: list[Rule] = []
    for colour in (RED, YELLOW):
        given = item.get(colour)
        if given is None:
            continue
        for text in [given] if isinstance(given, str) else given if isinstance(given, list) else [given]:
            rules.append(parse_rule(text, colour, where))
    if not rules:
        raise UsageError(f"{where}: a metrics probe needs red: and/or yellow: rules, "
                         "e.g. red: ['inbound_queue_depth > 1000']")  # fmt: skip
    return tuple(rules)


# --- the scrape ----------------------------------------------------------------------------------


def scrape_command(index: int, url: str, timeout: int) -> str:
    """Shell text fetching a metrics endpoint on the host into a temp file, then printing a
    `metrics INDEX RC BYTES` section: the body in base64 (a line of it can never start a section),
    at most MAX_BODY_BYTES of it; on failure the fetcher's own words."""
    q = shlex.quote(url)
    return (
        "rc=0; out=; size=0; if ! tmp=$(mktemp 2>/dev/null); then rc=126; out='mktemp failed'; "
        "elif ! command -v base64 >/dev/null 2>&1; then rc=127; out='no base64 on the host'; "
        "elif command -v curl >/dev/null 2>&1; then "
        f'out=$(curl -fsS -m {timeout} -o "$tmp" {q} 2>&1); rc=$?; '
        "elif command -v wget >/dev/null 2>&1; then "
        f'out=$(wget -q -T {timeout} -O "$tmp" {q} 2>&1); rc=$?; '
        "else rc=127; out='no curl or wget on the host'; fi; "
        'if [ -n "$tmp" ] && [ -f "$tmp" ]; then size=$(($(wc -c < "$tmp"))); fi; '
        f'echo "{MARK}metrics {index} $rc $size"; '
        f'if [ "$rc" = 0 ]; then head -c {MAX_BODY_BYTES} "$tmp" | base64; '
        'else printf "%s\\n" "$out" | head -c 300; fi; '
        'if [ -n "$tmp" ]; then rm -f "$tmp"; fi'
    )


@dataclass(frozen=True)
class Scrape:
    """One metrics endpoint as the host fetched it: the fetcher's exit code, the body's size, and
    the body (exit 0) or the fetcher's message."""

    code: int
    size: int
    text: str

    @classmethod
    def from_section(cls, code: int, size: str, body: str) -> Scrape:
        length = int(size) if size.isdigit() else 0
        if code != 0:
            return cls(code, length, body.strip())
        try:
            raw = base64.b64decode("".join(body.split()), validate=True)
        except (binascii.Error, ValueError):
            return cls(1, length, "the host's base64 output could not be decoded")
        return cls(0, length, raw.decode("utf-8", errors="replace"))

    @property
    def cut(self) -> bool:
        return self.size > MAX_BODY_BYTES



# --- verdicts ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    name: str
    labels: Mapping[str, str]
    value: float

    def describe(self) -> str:
        inside = ",".join(f'{k}="{v}"' for k, v in sorted(self.labels.items()))
        return f"{self.name}{{{inside}}}" if inside else self.name


def parse_exposition(text: str) -> list[Sample]:
    """Every sample of a Prometheus text exposition, read by prometheus_client's parser; ValueError
    (with the parser's words) for text it refuses."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        return [Sample(s.name, dict(s.labels), float(s.value))
                for family in text_string_to_metric_families(text) for s in family.samples]  # fmt: skip
    except Exception as exc:  # the parser raises ValueError mostly, but others on odd input: never a crash
        raise ValueError(" ".join(str(exc).split())[:150] or type(exc).__name__) from None


@dataclass(frozen=True)
class Verdict:
    rule: Rule
    colour: str
    value: float | str | None  # the deciding sample's value; "missing" / "NaN"
    detail: str


def judge(rule: Rule, samples: Sequence[Sample]) -> Verdict:
    """Pure: a rule against a scrape. No sample selected, or a NaN one: red, saying so."""
    chosen = [s for s in samples if rule.selects(s.name, s.labels)]
    if not chosen:
        return Verdict(rule, RED, "missing", f"no series {rule.selector} in the scrape")
    nan = [s for s in chosen if math.isnan(s.value)]
    if nan:
        return Verdict(rule, RED, "NaN", f"{nan[0].describe()} is NaN: cannot be compared")
    compare = COMPARISONS[rule.op]
    breached = [s for s in chosen if compare(s.value, rule.threshold)]
    pick = max if rule.op in (">", ">=") else min if rule.op in ("<", "<=") else None
    pool = breached or chosen
    worst = pick(pool, key=lambda s: s.value) if pick is not None else pool[0]
    count = f" ({len(breached)} of {len(chosen)} series)" if len(chosen) > 1 and breached else ""
    if breached:
        return Verdict(rule, rule.colour, worst.value, f"{worst.describe()} = {worst.value:g}{count}: {rule}")
    return Verdict(rule, GREEN, worst.value, f"{worst.describe()} = {worst.value:g}; limit {rule}")
