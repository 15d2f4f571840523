"""rollback's pure parts: what Docker knows (parsed from real output shapes), the candidates, and the
decision, table-driven over the deploys teams make (by this tool, by CI or by hand, none recorded)."""

from __future__ import annotations

import pytest

from remediations.actions import image_history as known
from remediations.actions import image_record as images
from remediations.core.errors import UsageError
from remediations.docker import rollback
from remediations.facts.compose import Container, ServiceFacts
from remediations.facts.sections import MARK

A, B, C, D = ("sha256:" + ch * 64 for ch in "abcd")
REF = "local/api:1"
NOW = "2026-12-01T00:00:00+00:00"  # when the current image was made


def seen(image_id: str, by: str = images.OBSERVED, at: str = "2026-12-01T10:00:00+00:00") -> images.Sighting:
    return images.Sighting(image_id, REF, at, by)


def image(image_id: str, *tags: str, created: str = "2026-11-15T00:00:00+00:00") -> known.ImageInfo:
    return known.ImageInfo(image_id, tags, created)


def other(image_id: str, service: str, project: str = "shop", ref: str = REF) -> known.ContainerInfo:
    return known.ContainerInfo(
        "c-" + service, image_id, ref, "running", "", project, service, f"{project}-{service}-1"
    )


def situation(
    running: str | tuple[str, ...] = C, history: list[images.Sighting] | None = None,
    present: tuple[known.ImageInfo, ...] = (), containers: tuple[known.ContainerInfo, ...] = (),
    to: str | None = None, to_answer: tuple[int, str] | None = None, also_move: bool = False,
) -> rollback.Situation:  # fmt: skip
    ids = (running,) if isinstance(running, str) else running
    boxes = (Container(f"id{n}", f"shop-api-{n}", "running", "t", "healthy", "", i, "api", REF)
             for n, i in enumerate(ids))  # fmt: skip
    facts = ServiceFacts("api", "v2", tuple(boxes))
    images_on_host = {i.id: i for i in present} | {
        i: image(i, REF) for i in ids if i not in {p.id for p in present}
    }
    docker = known.DockerKnowledge({}, images_on_host, containers, to_answer)
    return rollback.situation("shop", "api", facts, {"shop/api": history or []}, docker, to, also_move)


OLD_CONTAINER = known.ContainerInfo("x", B, REF, "exited", "", "shop", "api", "shop-api-old")
# Images on the host after an outside deploy: C is tagged local/api:1 now, B and A are untagged.
ON_HOST = (image(A, created="2026-11-01T00:00:00+00:00"), image(B, created="2026-11-20T00:00:00+00:00"),
           image(C, REF, created="2026-12-01T00:00:00+00:00"))  # fmt: skip


@pytest.mark.parametrize(
    ("s", "action", "target", "reason"),
    [
        # The bug: the tool's own change A → B, then an outside deploy of C: back to B, not A.
        (situation(C, [seen(A), seen(B, "set-env")], ON_HOST), "rollback", B, "the image api ran before"),
        # An outside deploy after cron's health runs recorded B: B.
        (situation(C, [seen(B)], ON_HOST), "rollback", B, "runs cccccccccccc; going back to bbbbbbbbbbbb"),
        # The record already noticed C (a health run): still one back.
        (situation(C, [seen(A), seen(B), seen(C)], ON_HOST), "rollback", B, "ran before"),
        # A second run: already on the image rollback put it on.
        (situation(B, [seen(A), seen(B), seen(C), seen(B, "rollback")], ON_HOST), "none", B,
         "already runs the previous image bbbbbbbbbbbb"),
        # A deploy after a rollback: one back again, to the image rollback had put it on.
        (situation(D, [seen(B), seen(C), seen(B, "rollback")], (*ON_HOST, image(D, REF))),
         "rollback", B, "ran"),
        # The image before is pruned: refused, naming what is still there.
        (situation(C, [seen(A), seen(B)], (image(A), image(C, REF, created=NOW))), "fail", "",
         "bbbbbbbbbbbb, the image api ran before cccccccccccc (a deploy outside this tool, first seen "
         "2026-12-01T10:00:00+00:00) is no longer on the host (pruned?); candidates: aaaaaaaaaaaa"),
        # No record at all: the repository's only other tag is the previous image.
        (situation(C, [], (image(B, "local/api:0.9"), image(C, REF, created=NOW), image(D, "local/other:1"))),
         "rollback", B, "the only other image Docker ties to api (tagged local/api:0.9)"),
        # No record: an old container of the service (stopped, kept by hand) names it.
        (situation(C, [], (image(B), image(C, REF, created=NOW)), (OLD_CONTAINER,)),
         "rollback", B, "the image of container shop-api-old (exited)"),
        # No record: two other tags: cannot tell, refused with both.
        (situation(C, [], (image(A, "local/api:0.8"), image(B, "local/api:0.9"), image(C, REF, created=NOW))),
         "fail", "", "cannot tell which image api ran before cccccccccccc: no record of it and several "
         "images could be it; candidates: "),
        # No record: only untagged images (they may be anything): refused, listing them.
        (situation(C, [], ON_HOST), "fail", "", "no previous image known for api: the record holds no image "
         "before cccccccccccc and Docker knows no older image of it (untagged ones may be anything); "
         "candidates: bbbbbbbbbbbb (an untagged image created 2026-11-20"),
        # Seen A, then two deploys before the next sighting: B was made after A ran and before C, so A
        # may be two deploys back: refused, naming both.
        (situation(C, [seen(A, at="2026-11-02T00:00:00+00:00")], ON_HOST), "fail", "",
         "bbbbbbbbbbbb (an untagged image created 2026-11-20T00:00:00+00:00; on the host) was made after "
         "aaaaaaaaaaaa ran and before it, so aaaaaaaaaaaa may be two deploys back"),
        # ... but an image made before A was seen running is no such sign.
        (situation(C, [seen(A, at="2026-11-25T00:00:00+00:00")], ON_HOST), "rollback", A, "ran before"),
        # No record: the repository's other tag is newer than what runs: no previous deploy.
        (situation(C, [], (image(B, "local/api:2", created="2026-12-02T00:00:00+00:00"),)), "fail", "",
         "no previous image known for api"),
        # No record and nothing else: refused.
        (situation(C, [], (image(C, REF, created=NOW),)), "fail", "", "no previous image known for api"),
        # Two images at once (a rolling deploy under way): refused.
        (situation((B, C), [seen(B)], ON_HOST), "fail", "", "containers run different images"),
        # --to: a name or id present on the host; absent; the one it runs.
        (situation(C, [], ON_HOST, to="local/api:0.8", to_answer=(0, A)),
         "rollback", A, "(--to local/api:0.8)"),
        (situation(C, [], ON_HOST, to="nosuch:1", to_answer=(1, "Error: No such image: nosuch:1")),
         "fail", "", "--to nosuch:1: no such image on the host (Error: No such image: nosuch:1); "
         "candidates: "),
        (situation(C, [], ON_HOST, to="cccc", to_answer=(0, C)), "none", C, "already runs cccccccccccc"),
    ],
)  # fmt: skip
def test_decide(s: rollback.Situation, action: str, target: str, reason: str) -> None:
    got = rollback.decide(s)
    assert (got.action, got.target if action != "fail" else "") == (action, target), got.reason
    assert reason in got.reason, got.reason


def test_other_services_on_the_same_image_name_are_named_and_need_also_move() -> None:
    sharing = (
        other(C, "worker"),
        other(C, "web", project="blog"),
        other(B, "cron"),
        other(C, "x", ref="y:1"),
    )
    refused = rollback.decide(situation(C, [seen(B)], ON_HOST, sharing))
    assert refused.action == "fail" and refused.moves == ("blog/web", "shop/worker")  # cron already runs B
    assert (
        "local/api:1 is also the image name of blog/web, shop/worker: retagging it to bbbbbbbbbbbb would "
        "move them too at their next recreate; nothing was changed (--also-move accepts that)"
        in refused.reason
    )
    moved = rollback.decide(situation(C, [seen(B)], ON_HOST, sharing, also_move=True))
    assert moved.action == "rollback" and moved.target == B and moved.moves == ("blog/web", "shop/worker")
    assert "they keep what they run now and move to bbbbbbbbbbbb at their next recreate" in moved.reason
    # the second run is ok whatever the others run
    again = rollback.decide(situation(B, [seen(B), seen(C), seen(B, "rollback")], ON_HOST, sharing))
    assert again.action == "none"


def test_candidates_newest_first_with_where_each_came_from() -> None:
    s = situation(
        C,
        [seen(A, at="t1"), seen(B, "set-env", at="t2")],
        (image(A), image(C, REF, created=NOW), image(D, "local/api:0.7", created="2026-10-01T00:00:00Z")),
    )
    got = [(c.image_id, c.present, c.sources[0]) for c in s.options]
    assert got == [
        (B, False, "recorded: api ran it (this tool's set-env, first seen t2)"),
        (A, True, "recorded: api ran it (a deploy outside this tool, first seen t1)"),
        (D, True, "tagged local/api:0.7"),
    ]
    assert "1. bbbbbbbbbbbb (recorded" in rollback.listing(s) and "no longer on the host" in rollback.listing(
        s
    )


def test_parse_facts_reads_docker_output() -> None:
    output = "\n".join([
        f"{MARK}record", images.render({"shop/api": [seen(B)]}).strip(),
        f"{MARK}images",
        f"{C}\tlocal/api\t1\t2026-12-01 15:40:12 +0000 UTC",
        f"{C}\tlocal/api\tlatest\t2026-12-01 15:40:12 +0000 UTC",
        f"{B}\t<none>\t<none>\t2026-11-20 08:00:00 +0100 CET",
        f"{MARK}containers",
        f"{'f' * 64}\t{C}\tlocal/api:1\trunning\t2026-12-01T15:41:00.123456789Z\tshop\tapi\t/shop-api-1",
        f"{'e' * 64}\t{A}\tbusybox\texited\t2026-11-01T00:00:00Z\t\t\t/old",
        f"{MARK}to 0", C,
    ])  # fmt: skip
    got = known.parse_facts(output)
    assert got.records == {"shop/api": [seen(B)]}
    assert got.images[C] == known.ImageInfo(
        C, ("local/api:1", "local/api:latest"), "2026-12-01T15:40:12+00:00"
    )
    assert got.images[B] == known.ImageInfo(B, (), "2026-11-20T07:00:00+00:00")
    assert got.containers[0] == known.ContainerInfo(
        "f" * 64, C, "local/api:1", "running", "2026-12-01T15:41:00+00:00", "shop", "api", "shop-api-1"
    )
    assert got.containers[1].service == "" and got.to == (0, C)


@pytest.mark.parametrize(
    ("ref", "repo"),
    [
        ("local/api:1", "local/api"),
        ("reg:5000/api", "reg:5000/api"),
        ("reg:5000/api:2", "reg:5000/api"),
        ("api@sha256:ab", "api"),
    ],
)
def test_repository(ref: str, repo: str) -> None:
    assert known.repository(ref) == repo


def test_to_must_look_like_an_image() -> None:
    assert rollback.image_name("local/api:1.4", "--to") == "local/api:1.4"
    for bad in ("a b", "x;rm -rf /", "-rf", "a\nb"):
        with pytest.raises(UsageError, match="not an image name or id"):
            rollback.image_name(bad, "--to")
    with pytest.raises(UsageError, match="--list and --to"):
        rollback.Rollback.from_values({"service": "api", "to": "x:1", "list": True, "also_move": False})


@pytest.mark.parametrize(
    ("made", "between"),
    [
        ("2026-12-01T03:00:04+00:00", False),  # before the old image was seen running
        ("2026-12-01T03:00:05+00:00", True),  # the second it was seen: cannot tell which came first
        ("2026-12-01T03:00:06+00:00", True),
        ("2026-12-01T03:00:09+00:00", True),  # the second the current image was made
        ("2026-12-01T03:00:10+00:00", False),  # after the current image
    ],
)
def test_an_image_made_in_the_same_second_counts_as_between(made: str, between: bool) -> None:
    """A sighting and an image build are to the second: the same second is refused, not guessed."""
    created = {
        "sha256:old": known.ImageInfo("sha256:old", (), "2026-12-01T03:00:00+00:00"),
        "sha256:mid": known.ImageInfo("sha256:mid", (), made),
        "sha256:new": known.ImageInfo("sha256:new", (), "2026-12-01T03:00:09+00:00"),
    }
    present = tuple(known.Candidate(i, True) for i in created)
    found = known._made_between("sha256:old", "2026-12-01T03:00:05+00:00", "sha256:new", present, created)
    assert [c.image_id for c in found] == (["sha256:mid"] if between else [])
