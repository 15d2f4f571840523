"""A stand-in for `inv` in the receiver's unit tests: records its call, waits if told, and prints a
--json document with the exit code the test asked for ($FAKE_INV_BEHAVIOUR: {"code": 0, "sleep": 0})."""

import json
import os
import sys
import time

start = time.time()
behaviour = json.loads(open(os.environ["FAKE_INV_BEHAVIOUR"]).read())  # noqa: SIM115
with open(os.environ["FAKE_INV_CALLS"], "a") as calls:
    calls.write(json.dumps({"argv": sys.argv[1:], "run_id": os.environ.get("REMEDIATIONS_RUN_ID"),
                            "start": start, "end": start + behaviour.get("sleep", 0)}) + "\n")  # fmt: skip
time.sleep(behaviour.get("sleep", 0))
code = behaviour.get("code", 0)
host = sys.argv[sys.argv.index("--host") + 1]
status = "failed" if code == 1 else "changed"
print(json.dumps({"exit_code": code, "hosts": [{"host": host, "status": status, "message": "restarted"}]}))
sys.exit(code)
