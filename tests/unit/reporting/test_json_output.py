"""The --json document of real runs (`python -m invoke … --json` on local hosts) against the schema in
the package (remediations/reporting/run.schema.json), and the schema against malformed documents."""

from __future__ import annotations

import copy
import datetime as dt
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from remediations.reporting.output import SCHEMA_PATH, SCHEMA_VERSION
from tests import labkit

SECRET = "hunter2-never-shown-7Qx"  # noqa: S105 - the value a test makes sure is never printed


def validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def inventory(tmp_path: Path) -> Path:
    # local hosts whose project directory is missing: each task fails its facts step, no docker needed
    project = {"compose_project_dir": str(tmp_path / "no such project")}
    return labkit.write_local_inventory(tmp_path, {"local1": project, "local2": project},
                                        compose_project_name="shop", api_service="api")  # fmt: skip


RUNS = [
    pytest.param(["restart-api", "--host", "local1", "--check"], 1, id="restart-api-check"),
    pytest.param(["restart-api", "--host", "local*", "--parallel", "1", "--lock-wait", "1.5"], 1,
                 id="restart-api-two-hosts"),
    pytest.param(["set-env", "--host", "local1", "--service", "api", "--set", f"API_TOKEN={SECRET}"], 1,
                 id="set-env-secret"),
    pytest.param(["ensure-healthy", "--host", "local2", "--check"], 1, id="ensure-healthy"),
    pytest.param(["restart-api", "--host", "nosuchhost"], 2, id="usage-error"),
    pytest.param(["restart-api", "--host", "local1", "--parallel", "many"], 2, id="bad-parallel"),
    pytest.param(["restart-api", "--hots", "local1"], 2, id="invoke-parse-error"),
]


@pytest.mark.parametrize(("argv", "code"), RUNS)
def test_real_json_output_matches_the_schema(tmp_path: Path, audit: Path, argv: list[str], code: int) -> None:
    ran = labkit.inv(*argv, "--json", audit=audit, inventory=inventory(tmp_path), timeout=60)
    assert ran.code == code, (ran.stdout[-2000:], ran.stderr[-2000:])
    assert "Traceback" not in ran.stderr
    document = json.loads(ran.stdout)  # stdout is one JSON document and nothing else
    validator().validate(document)
    assert document["schema"] == SCHEMA_VERSION
    assert document["exit_code"] == code
    assert SECRET not in ran.stdout and SECRET not in ran.stderr
    assert SECRET not in (audit.read_text() if audit.exists() else "")
    if code == 2:
        [line] = ran.stderr.splitlines()
        assert document == {"schema": 1, "error": line.removeprefix("error: "), "exit_code": 2}
        return
    assert document["run_id"] == {r["run_id"] for r in labkit.audit_lines(audit)}.pop()
    assert document["task"] == argv[0]
    assert document["arguments"]["host"] == argv[2]
    started, ended = (dt.datetime.fromisoformat(document[k]) for k in ("started", "ended"))
    assert started.utcoffset() == dt.timedelta(0) and started <= ended
    assert document["hosts"][0]["steps"][0]["step"] == "facts"  # per host, per step
    assert len(document["hosts"]) == (2 if argv[2] == "local*" else 1)


def test_secret_values_are_masked_in_the_arguments(tmp_path: Path, audit: Path) -> None:
    ran = labkit.inv("set-env", "--host", "local1", "--service", "api", "--set", f"API_TOKEN={SECRET}",
                     "--set", "LOG_LEVEL=debug", "--json", audit=audit, inventory=inventory(tmp_path),
                     timeout=60)  # fmt: skip
    arguments = json.loads(ran.stdout)["arguments"]
    assert [item.split("=", 1)[0] for item in arguments["set"]] == ["API_TOKEN", "LOG_LEVEL"]
    assert SECRET not in ran.stdout and "debug" not in json.dumps(arguments)  # names, never values
    assert (arguments["service"], arguments["check"], arguments["parallel"]) == ("api", False, None)


def run_document() -> dict[str, Any]:
    step = {"step": "facts", "status": "failed", "message": "m", "diff": "", "duration": 0.1, "data": {},
            "warning": False}  # fmt: skip
    host = {"host": "api1", "status": "failed", "message": "m", "duration": 0.1, "warnings": [],
            "steps": [step]}  # fmt: skip
    return {"schema": 1, "run_id": "20260101T000000Z-1", "task": "restart-api",
            "arguments": {"host": "api1", "check": False}, "started": "2026-01-01T00:00:00.000+00:00",
            "ended": "2026-01-01T00:00:01.000+00:00", "check": False, "duration": 1.0,
            "counts": {"ok": 0, "changed": 0, "failed": 1, "skipped": 0}, "stopped_early": "",
            "interrupted": "", "hosts": [host], "exit_code": 1, "warnings": []}  # fmt: skip


def _set(path: tuple[Any, ...], value: Any) -> Any:
    def change(document: dict[str, Any]) -> None:
        target: Any = document
        for key in path[:-1]:
            target = target[key]
        if value is KeyError:
            del target[path[-1]]
        else:
            target[path[-1]] = value

    return change


MALFORMED = [
    pytest.param(_set(("schema",), 2), id="another-schema"),
    pytest.param(_set(("run_id",), KeyError), id="no-run-id"),
    pytest.param(_set(("exit_code",), "1"), id="exit-code-text"),
    pytest.param(_set(("started",), "yesterday"), id="started-not-a-time"),
    pytest.param(_set(("ended",), "2026-01-01T00:00:01"), id="ended-not-utc"),
    pytest.param(_set(("hosts", 0, "status"), "fine"), id="unknown-status"),
    pytest.param(_set(("hosts", 0, "steps", 0, "duration"), -1), id="negative-duration"),
    pytest.param(_set(("hosts", 0, "steps", 0), {"step": "facts"}), id="step-missing-keys"),
    pytest.param(_set(("counts", "lost"), 1), id="unknown-count"),
    pytest.param(_set(("arguments",), {"check": False}), id="arguments-without-host"),
]


def test_the_schema_accepts_a_well_formed_document() -> None:
    validator().validate(run_document())
    error = {"schema": 1, "error": "--parallel 'x': give a whole number 1 or more", "exit_code": 2}
    validator().validate(error)


@pytest.mark.parametrize("change", MALFORMED)
def test_the_schema_rejects_a_malformed_document(change: Any) -> None:
    document = copy.deepcopy(run_document())
    change(document)
    with pytest.raises(jsonschema.ValidationError):
        validator().validate(document)


@pytest.mark.parametrize("document", [
    {"schema": 1, "error": "", "exit_code": 2},
    {"schema": 1, "error": "bad", "exit_code": 1},
    {"schema": 1, "error": "bad", "exit_code": 2, "hosts": []},
], ids=["empty-message", "exit-1", "error-with-hosts"])  # fmt: skip
def test_the_schema_rejects_a_malformed_error_document(document: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        validator().validate(document)
