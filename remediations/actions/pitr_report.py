"""restore-pitr's result as Prometheus textfile metrics (`restore_pitr_*`), like restore-test's."""

from __future__ import annotations

from typing import Any


def metrics_text(host: str, report: dict[str, Any]) -> str:
    """Prometheus text of one run (node_exporter's textfile collector)."""
    base = (
        'restore_host="'
        + host.replace("\\", "\\\\").replace('"', '\\"')
        + '",mode="'
        + ("drill" if report.get("drill") else "switch")
        + '"'
    )
    last = report.get("last_success_timestamp")
    lag = None
    if report.get("replayed_at") is not None and report.get("target_epoch") is not None:
        lag = float(report["target_epoch"]) - float(report["replayed_at"])
    lines = [
        "# HELP restore_pitr_success 1 when the last point-in-time restore passed, else 0.",
        "# TYPE restore_pitr_success gauge",
        f"restore_pitr_success{{{base}}} {1 if report.get('success') else 0}",
        "# HELP restore_pitr_duration_seconds Wall time of the last point-in-time restore.",
        "# TYPE restore_pitr_duration_seconds gauge",
        f"restore_pitr_duration_seconds{{{base}}} {float(report.get('duration_seconds') or 0):.3f}",
        "# HELP restore_pitr_phase_duration_seconds Wall time of each phase of the last restore.",
        "# TYPE restore_pitr_phase_duration_seconds gauge",
        *(
            f'restore_pitr_phase_duration_seconds{{{base},phase="{p}"}} {float(s):.3f}'
            for p, s in (report.get("phases") or {}).items()
        ),
        "# HELP restore_pitr_last_success_timestamp_seconds Unix time of the last passed restore.",
        "# TYPE restore_pitr_last_success_timestamp_seconds gauge",
        f"restore_pitr_last_success_timestamp_seconds{{{base}}} {float(last) if last else 0:.0f}",
        "# HELP restore_pitr_segments WAL segments the last restore replayed from the archive.",
        "# TYPE restore_pitr_segments gauge",
        f"restore_pitr_segments{{{base}}} {int(report.get('segments') or 0)}",
        "# HELP restore_pitr_rows Rows counted in each checked table of the restored cluster.",
        "# TYPE restore_pitr_rows gauge",
        *(f'restore_pitr_rows{{{base},table="{t}"}} {int(n)}' for t, n in (report.get("rows") or {}).items()),
    ]
    if lag is not None:
        lines += [
            "# HELP restore_pitr_target_gap_seconds Target time minus the last replayed commit's time.",
            "# TYPE restore_pitr_target_gap_seconds gauge",
            f"restore_pitr_target_gap_seconds{{{base}}} {lag:.3f}",
        ]
    return "\n".join(lines) + "\n"
