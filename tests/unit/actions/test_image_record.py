"""The image record (pure): its file format, version 1's replacements read as sightings, what is noted
when a service is seen or replaced."""

from __future__ import annotations

import json

from remediations.actions import image_record as images
from remediations.facts.compose import Container

A, B, C = "sha256:" + "a" * 64, "sha256:" + "b" * 64, "sha256:" + "c" * 64
REF = "local/api:1"


def box(image: str, name: str = "shop-api-1") -> Container:
    return Container("id", name, "running", "t0", "healthy", "", image, "api", REF)


def ids(history: list[images.Sighting]) -> list[tuple[str, str]]:
    return [(s.image_id, s.by) for s in history]


def test_version_1_replacements_read_as_sightings() -> None:
    old = {"shop/api": [
        {"at": "t1", "task": "set-env", "from": A, "to": B, "ref": REF},
        {"at": "t2", "task": "restart-api", "from": B, "to": B, "ref": REF},
        {"at": "t3", "task": "rollback", "from": B, "to": A, "ref": REF},
    ]}  # fmt: skip
    history = images.parse(json.dumps(old))["shop/api"]
    assert ids(history) == [(A, images.OBSERVED), (B, "set-env"), (A, "rollback")]
    assert history[1].seen == "t1" and history[0].seen == ""


def test_render_and_parse_round_trip_and_keep_the_newest() -> None:
    history = [images.Sighting(f"sha256:{n:064x}", REF, f"t{n}", images.OBSERVED) for n in range(30)]
    back = images.parse(images.render({"shop/api": history}))
    assert back == {"shop/api": history[-images.KEEP :]}
    assert json.loads(images.render({}))["version"] == images.VERSION
    for junk in ("", "not json", "[1]", '{"version": 2, "services": []}'):
        assert images.parse(junk) == {}


def test_observed_notes_only_an_image_the_record_does_not_end_on() -> None:
    history = images.observed([], A, REF, "t1")
    assert ids(history) == [(A, images.OBSERVED)]
    assert images.observed(history, A, REF, "t2") == history  # seen again: nothing new, no write
    later = images.observed(history, B, REF, "t3")
    assert ids(later) == [(A, images.OBSERVED), (B, images.OBSERVED)] and later[-1].seen == "t3"


def test_replaced_notes_before_and_after_and_claims_what_an_observer_saw_first() -> None:
    history = images.replaced([], "set-env", A, B, REF, "t1")
    assert ids(history) == [(A, images.OBSERVED), (B, "set-env")]
    assert images.replaced(history, "restart-api", B, B, REF, "t2") == history  # same image: nothing
    # A health run saw rollback's new container before rollback noted it: the change is rollback's.
    seen = images.observed(history, A, REF, "t3")
    claimed = images.replaced(seen, "rollback", B, A, REF, "t4")
    assert ids(claimed) == [(A, images.OBSERVED), (B, "set-env"), (A, "rollback")]
    assert claimed[-1].seen == "t3"


def test_noticed_and_running_image() -> None:
    records = images.noticed({}, "shop", {"api": [box(A)], "worker": []}, "t1")
    assert ids(records["shop/api"]) == [(A, images.OBSERVED)] and "shop/worker" not in records
    assert images.noticed(records, "shop", {"api": [box(A)]}, "t2") == records
    mid_rollout = [box(A, "shop-api-1"), box(B, "shop-api-2")]
    assert images.running_image(mid_rollout) == ("", "")  # two images at once: nothing is noted
    assert images.noticed(records, "shop", {"api": mid_rollout}, "t3") == records
    assert images.running_image([box(B)]) == (B, REF)
