"""bot-webhook on the lab: the token is in an env file on api1, read over SSH; the Bot API is a peer
on the controller's loopback (tests/botapi_peer.py). The quartet of --set with a secret, the record
on the host, and the token in no output or audit line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import hosts as lab
from tests import botapi_peer, labkit
from tests.quartet import quartet

pytestmark = pytest.mark.lab

HOST = "api1"
TOKEN = "555000111:AAHlab-token_abcdefghijklmnopqrstuv"  # noqa: S105 - a test value
SECRET = "lab_webhook_secret-1"  # noqa: S105
ENV_FILE = "/srv/botlab/.env"
STATE_DIR = "/var/lib/remediations-botlab"
URL = "https://calendar.example.com/webhook"


@pytest.fixture
def peer() -> Iterator[botapi_peer.Peer]:
    text = f"# AI Calendar\nTELEGRAM_BOT_TOKEN={TOKEN}\nREDIS_URL=redis://redis:6379/0\n"
    lab.exec_on(HOST, ["sh", "-c", f"rm -rf {STATE_DIR}; mkdir -p /srv/botlab; umask 077; cat > {ENV_FILE}"],
                input=text.encode())  # fmt: skip
    with botapi_peer.serving() as serving:
        serving.add_bot(TOKEN)
        yield serving
    lab.exec_on(HOST, ["rm", "-rf", "/srv/botlab", STATE_DIR])


def test_set_reads_the_token_over_ssh_and_is_the_quartet(tmp_path: Path, peer: botapi_peer.Peer) -> None:
    bots = {"calendar": {"host": HOST, "env_file": ENV_FILE, "api_url": peer.url, "timeout": 5}}
    inventory = labkit.write_inventory(tmp_path / "inv.yml", all_vars={"telegram_bots": bots},
                                       host_vars={HOST: {"state_dir": STATE_DIR}})  # fmt: skip
    audit = tmp_path / "audit.jsonl"
    environ = {"HOOK_SECRET": SECRET}
    runs = quartet("bot-webhook", "--bot", "calendar", "--set", URL, "--secret-token-from-env", "HOOK_SECRET",
                   hosts=[HOST], audit=audit, inventory=inventory, env=environ,
                   state=lambda: (peer.bots[TOKEN].url, peer.bots[TOKEN].secret_token))  # fmt: skip
    assert (peer.bots[TOKEN].url, peer.bots[TOKEN].secret_token) == (URL, SECRET)
    facts = runs.again.host(HOST)["steps"][0]
    assert facts["data"]["source"] == f"TELEGRAM_BOT_TOKEN in {ENV_FILE} on {HOST}"
    record = lab.exec_on(HOST, ["sh", "-c", f"stat -c %a {STATE_DIR}/telegram-webhooks.json; "
                                f"cat {STATE_DIR}/telegram-webhooks.json"]).stdout.decode()  # fmt: skip
    mode, _, body = record.partition("\n")
    assert mode == "600" and json.loads(body)["bots"]["calendar"]["url"] == URL
    report = labkit.inv("bot-webhook", "--bot", "calendar", "--json", audit=audit, inventory=inventory)
    assert report.code == 0 and report.host(HOST)["steps"][0]["data"]["info"]["url"] == URL
    for text in [r.stdout + r.stderr for r in (runs.check, runs.apply, runs.again, runs.check_again, report)]:
        assert TOKEN not in text and SECRET not in text and TOKEN.split(":")[1] not in text
    assert TOKEN not in audit.read_text() and SECRET not in audit.read_text() and TOKEN not in body
    assert all(path.startswith(f"/bot{TOKEN}/") for path in peer.paths)
