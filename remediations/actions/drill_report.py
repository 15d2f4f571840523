"""The restore drill's result on the controller: JSON and Prometheus textfile metrics, each written
atomically (a temporary file in the same folder, fsync, rename), so that a reader (node_exporter's
textfile collector, a dashboard) never sees half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from contextlib import suppress
from pathlib import Path
from typing import Any


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def metrics_text(host: str, report: Mapping[str, Any]) -> str:
    """Prometheus text exposition of one drill's report (for node_exporter's textfile collector)."""
    base = f'restore_host="{_label(host)}"'
    lines = [
        "# HELP restore_test_success 1 when the last restore test passed, else 0.",
        "# TYPE restore_test_success gauge",
        f"restore_test_success{{{base}}} {1 if report.get('success') else 0}",
        "# HELP restore_test_duration_seconds Wall time of the last restore test.",
        "# TYPE restore_test_duration_seconds gauge",
        f"restore_test_duration_seconds{{{base}}} {float(report.get('duration_seconds') or 0):.3f}",
        "# HELP restore_test_phase_duration_seconds Wall time of each phase of the last restore test.",
        "# TYPE restore_test_phase_duration_seconds gauge",
    ]
    for phase, seconds in (report.get("phases") or {}).items():
        lines.append(
            f'restore_test_phase_duration_seconds{{{base},phase="{_label(phase)}"}} {float(seconds):.3f}'
        )
    last = report.get("last_success_timestamp")
    lines += [
        "# HELP restore_test_last_success_timestamp_seconds Unix time of the last passed restore test.",
        "# TYPE restore_test_last_success_timestamp_seconds gauge",
        f"restore_test_last_success_timestamp_seconds{{{base}}} {float(last) if last else 0:.0f}",
        "# HELP restore_test_rows Rows counted in each checked table of the restored dump.",
        "# TYPE restore_test_rows gauge",
    ]
    for table, rows in (report.get("rows") or {}).items():
        lines.append(f'restore_test_rows{{{base},table="{_label(table)}"}} {int(rows)}')
    return "\n".join(lines) + "\n"


def write_atomically(path: str, text: str) -> None:
    """Temporary file in the same folder, fsync, rename: a reader never sees half a file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, target)
    except BaseException:
        with_suppressed_unlink(temp)
        raise


def with_suppressed_unlink(path: str) -> None:
    with suppress(FileNotFoundError):
        os.unlink(path)


def previous_success(json_path: str) -> float | None:
    try:
        data = json.loads(Path(json_path).read_text(encoding="utf-8"))
        value = data.get("last_success_timestamp")
        return float(value) if value else None
    except (OSError, ValueError, AttributeError, TypeError):
        return None


def write_results(
    ctx: Any, json_path: str, metrics_path: str, report: Mapping[str, Any], metrics: str
) -> None:
    """The result JSON and the metrics file, each replaced whole; the `report` step says which."""
    from remediations.core.results import Status

    try:
        write_atomically(json_path, json.dumps(report, indent=2, default=str) + "\n")
        write_atomically(metrics_path, metrics)
    except OSError as exc:
        ctx.record("report", Status.FAILED, f"result not written: {exc}")
        return
    ctx.record("report", Status.OK, f"wrote {json_path} and {metrics_path}")
