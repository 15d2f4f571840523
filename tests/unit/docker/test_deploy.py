"""deploy's pure parts: how an image is pinned, the name to deploy, the marker, and the decision."""

from __future__ import annotations

from dataclasses import replace

import pytest

from remediations.actions import deploy_pin as pins
from remediations.actions import image_record as images
from remediations.core.errors import UsageError
from remediations.docker import deploy
from remediations.facts.compose import Container, ServiceFacts

OLD, NEW, OTHER = ("sha256:" + ch * 64 for ch in "abc")
REF = "local/api:1"


@pytest.mark.parametrize(
    ("template", "variable", "ref", "value"),
    [
        ("local/api:1", "", "local/api:2", None),
        ("local/api:${API_TAG}", "API_TAG", "local/api:2.4", "2.4"),
        ("local/api:${API_TAG:-1}", "API_TAG", "local/api:2.4", "2.4"),
        ("local/api:${API_TAG-1}", "API_TAG", "local/api:2.4", "2.4"),
        ("local/api:$API_TAG", "API_TAG", "local/api:2.4", "2.4"),
        ("${API_IMAGE}", "API_IMAGE", "reg.example:5000/api:7", "reg.example:5000/api:7"),
        ("local/${FLAVOUR}-api:3", "FLAVOUR", "local/slim-api:3", "slim"),
        ("local/api:${API_TAG}", "API_TAG", "other/api:2.4", None),  # does not fit the template
        ("local/api:${API_TAG}", "API_TAG", "local/api:", None),  # an empty value is no tag
    ],
)
def test_how_an_image_is_pinned(template: str, variable: str, ref: str, value: str | None) -> None:
    pin = pins.pin_of(template)
    assert (pin.variable, pin.by_env, pin.error) == (variable, bool(variable), "")
    if pin.by_env:
        assert pin.value_for(ref) == value


@pytest.mark.parametrize(
    ("template", "error"),
    [
        ("${REPO}:${TAG}", "uses several variables (REPO, TAG)"),
        ("local/api:$$TAG", ""),  # `$$` is a literal dollar: a fixed name
    ],
)
def test_images_a_deploy_cannot_pin_say_why(template: str, error: str) -> None:
    pin = pins.pin_of(template)
    assert error in pin.error and bool(pin.error) == bool(error)
    assert not pin.by_env


@pytest.mark.parametrize(
    ("wanted", "current", "expected"),
    [
        (None, REF, REF),
        ("2.4", REF, "local/api:2.4"),
        ("2.4", "reg.example:5000/team/api:1", "reg.example:5000/team/api:2.4"),
        ("local/api:good", "local/busybox:1", "local/api:good"),
        ("busybox:2", REF, "busybox:2"),
        ("sha256abc", REF, "sha256abc"),
    ],
)
def test_the_name_to_deploy(wanted: str | None, current: str, expected: str) -> None:
    assert pins.target_ref(wanted, current) == expected


def test_image_template_is_the_last_file_naming_one() -> None:
    files: list[dict[str, object]] = [
        {"api": {"image": "local/api:1"}},
        {"api": {"ports": []}},
        {"api": {"image": "local/api:${T}"}, "worker": {"image": "w"}},
    ]
    assert pins.image_template(files, "api") == "local/api:${T}"
    assert pins.image_template(files[:2], "api") == "local/api:1"
    assert pins.image_template(files, "nosuch") == ""


@pytest.mark.parametrize(
    "value", ["$(touch /tmp/x)", "api;reboot", "a b", "../etc/passwd", "local/../x", "-rm", "x" * 300, "é"]
)
def test_hostile_images_are_refused(value: str) -> None:
    with pytest.raises(UsageError, match=r"--image .*: not an image name or tag"):
        deploy.image_arg(value, "--image")


@pytest.mark.parametrize(
    "value", ["2.4", "local/api:2.4", "reg.example:5000/team/api:1", "sha256:" + "a" * 64]
)
def test_image_names_and_tags_are_taken(value: str) -> None:
    assert deploy.image_arg(value, "--image") == value


def test_the_marker_reads_back_and_a_damaged_one_says_so() -> None:
    marker = pins.Marker(
        OLD, REF, "local/api:2", NEW, "API_TAG", None, "2026-12-01T22:00:00+00:00", "ops@ctl"
    )
    assert pins.parse_marker(marker.render()) == (marker, "")
    assert pins.parse_marker("") == (None, "")
    broken, why = pins.parse_marker('{"version": 1, "from_id": ')
    assert broken is None and "cannot be read" in why
    other, why = pins.parse_marker('{"version": 9, "from_id": "x"}')
    assert other is None and "not a version 1 marker" in why


def test_a_rolled_back_deploy_leaves_no_trace_a_later_rollback_would_follow() -> None:
    def sighting(image_id: str, by: str) -> images.Sighting:
        return images.Sighting(image_id, REF, "t", by)

    before = [sighting(OTHER, "observed"), sighting(OLD, "deploy")]
    after = [*before, sighting(NEW, "deploy"), sighting(OLD, "deploy")]
    assert pins.without_failed(after, OLD, NEW) == before
    assert pins.without_failed(before, OLD, NEW) == before  # nothing of the failed deploy: unchanged


# --- decide ----------------------------------------------------------------------------------------


def facts(*image_ids: str, health: str = "healthy", ref: str = REF, error: str = "") -> ServiceFacts:
    boxes = tuple(Container(f"id{n}", f"shop-api-{n}", "running", "t", health, "", i, "api", ref)
                  for n, i in enumerate(image_ids))  # fmt: skip
    return ServiceFacts("api", "v2", boxes, error=error)


def situation(**changes: object) -> deploy.Situation:
    """api runs OLD as local/api:1 (healthy); the deploy is of local/api:2 (NEW, on the host), pinned
    by retagging local/api:1."""
    base = deploy.Situation("api", facts(OLD), pins.pin_of(REF), "local/api:2", NEW, "", OLD, None)
    return replace(base, **changes)  # type: ignore[arg-type]


MARKER = pins.Marker(OTHER, "local/api:0", "local/api:2", NEW, started="2026-12-01T22:00:00+00:00")


@pytest.mark.parametrize(
    ("s", "action", "reason"),
    [
        (situation(), "deploy", "api runs local/api:1 (aaaaaaaaaaaa, healthy)"),
        (
            situation(facts=facts(NEW), ref_id=NEW),
            "none",
            "already runs local/api:2 (bbbbbbbbbbbb) and is healthy",
        ),
        (situation(facts=facts(NEW), ref_id=NEW, pull=True), "deploy", ""),  # the pull may bring a newer one
        (
            situation(facts=facts(NEW, health="unhealthy"), ref_id=NEW),
            "fail",
            "a deploy would change nothing",
        ),
        (
            situation(target_id="", looked_up="Error: No such image: local/api:2"),
            "fail",
            "local/api:2 is not on the host (Error: No such image: local/api:2): build or load it there, "
            "or give --pull",
        ),
        (situation(target_id="", pull=True), "deploy", ""),
        (situation(shared=("shop/worker",)), "fail", "local/api:1 is also the image name of shop/worker"),
        (situation(shared=("shop/worker",), also_move=True), "deploy", ""),
        (situation(facts=facts()), "fail", "no api container exists"),
        (situation(facts=facts(OLD, NEW)), "fail", "containers run different images"),
        (
            situation(facts=facts(error="unknown service 'api': the project has web")),
            "fail",
            "unknown service",
        ),
        (
            situation(marker_error="the marker of an earlier deploy cannot be read (x)"),
            "fail",
            "cannot be read",
        ),
        (
            situation(facts=facts(OLD, ref="local/api@sha256:" + "d" * 64)),
            "fail",
            "a digest cannot be pointed",
        ),
        (situation(pin=pins.pin_of("${A}:${B}")), "fail", "uses several variables"),
        # an interrupted deploy had got as far as running the new image, healthy: kept
        (situation(facts=facts(NEW), ref_id=NEW, marker=MARKER), "finish", "rolled forward"),
        # ... not healthy: deployed again, and on failure back to what the marker recorded
        (
            situation(facts=facts(NEW, health="unhealthy"), ref_id=NEW, marker=MARKER),
            "deploy",
            "found: on failure",
        ),
    ],
)
def test_decide(s: deploy.Situation, action: str, reason: str) -> None:
    decision = deploy.decide(s)
    assert (decision.action, reason in decision.reason) == (action, True), decision.reason


def test_the_image_to_go_back_to_is_the_one_running_or_the_one_an_interrupted_deploy_recorded() -> None:
    plain = deploy.decide(situation())
    assert (plain.back_id, plain.back_ref, plain.retag) == (OLD, REF, True)
    resumed = deploy.decide(situation(facts=facts(NEW, health="unhealthy"), ref_id=NEW, marker=MARKER))
    assert (resumed.back_id, resumed.back_ref) == (OTHER, "local/api:0")


def test_pinned_by_a_variable_sets_it_and_goes_back_to_its_old_value() -> None:
    pin = pins.pin_of("local/api:${API_TAG:-1}")
    s = situation(pin=pin, env_value=None)
    decision = deploy.decide(s)
    assert (decision.action, decision.env_value, decision.back_env, decision.retag) == (
        "deploy",
        "2",
        None,
        False,
    )
    # running it, healthy, and .env says so: nothing to do
    done = situation(pin=pin, env_value="2", facts=facts(NEW, ref="local/api:2"), ref_id=OLD)
    assert deploy.decide(done).action == "none"
    # running it, but .env does not pin it (a `docker tag` by hand): pinned now
    assert deploy.decide(replace(done, env_value="1")).action == "deploy"
    wrong = deploy.decide(situation(pin=pin, target="other/api:2"))
    assert wrong.action == "fail" and "does not fit the compose file's image" in wrong.reason


def test_deploying_the_name_compose_uses_needs_no_retag() -> None:
    """`--image` not given: the name compose uses now, moved by a load, a build or --pull."""
    decision = deploy.decide(situation(target=REF, target_id=NEW, ref_id=NEW, shared=("shop/worker",)))
    assert (decision.action, decision.retag) == ("deploy", False)  # the others move whatever this does
