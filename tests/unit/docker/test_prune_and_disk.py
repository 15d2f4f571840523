"""Pure parts of prune, disk-cleanup and health: parsers and decisions, table-driven, no host."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from remediations.actions import docker_prune as prune
from remediations.core.errors import UsageError
from remediations.core.inventory import Host
from remediations.core.results import Status
from remediations.core.units import docker_time, parse_duration, parse_size
from remediations.facts import disk as diskfacts
from remediations.facts import docker as dockerfacts
from remediations.facts.compose import Container
from remediations.facts.fs import FsUsage
from remediations.facts.sections import parse_sections
from remediations.host import disk_cleanup as disk
from remediations.host import health

NOW = 1_800_000_000.0
HOUR = 3600.0
DAY = 86400.0


# --- hostfacts -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0B", 0),
        ("15B", 15),
        ("1.982MB", 1_982_000),
        ("2kB", 2000),
        ("1.5GB", 1_500_000_000),
        ("3KiB", 3072),
        ("", 0),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["lots", "1.2 XB", "-3MB"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "seconds"),
    # One grammar for every duration flag (--older-than, --max-age, --ttl): weeks and combined units too.
    [("168h", 604800), ("30m", 1800), ("7d", 604800), ("0s", 0), ("45", 45), ("1.5h", 5400), ("1w", 604800),
     ("1d12h", 129600)],
)  # fmt: skip
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text, "--older-than") == seconds


@pytest.mark.parametrize("text", ["-1h", "soon", "1y", "", "1h30", "1.5h30m"])
def test_parse_duration_rejects_with_usage_error(text: str) -> None:
    with pytest.raises(UsageError, match="--older-than"):
        parse_duration(text, "--older-than")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-01-01T00:00:00Z", 1704067200.0),
        ("2024-01-01T00:00:01.123456789Z", 1704067201.123456),
        ("2026-11-23 16:10:03.084611701 +0000 UTC", 1795450203.084611),
        ("2024-01-01 00:00:00 +0000 UTC", 1704067200.0),
    ],
)
def test_docker_time(text: str, expected: float) -> None:
    assert docker_time(text) == pytest.approx(expected, abs=1e-5)


def test_sections_keep_repeated_names_in_order() -> None:
    out = "junk\n@@fs /\n1 2 3 4\n@@fs /srv\n5 6 7 8\n@@now\n12\n"
    found = [(s.name, s.arg, s.body) for s in parse_sections(out)]
    assert found == [("fs", "/", "1 2 3 4"), ("fs", "/srv", "5 6 7 8"), ("now", "", "12")]


@pytest.mark.parametrize(
    ("body", "percent", "available"),
    [("1000 250 200 4096", 750 / 950 * 100, 200 * 4096), ("100 100 100 1024", 0.0, 100 * 1024)],
)
def test_fs_usage_as_df_computes_it(body: str, percent: float, available: int) -> None:
    fs = FsUsage.parse("/", body)
    assert fs.percent == pytest.approx(percent)
    assert fs.available == available


def test_fs_usage_error_text_is_kept() -> None:
    with pytest.raises(ValueError, match="No such file"):
        FsUsage.parse("/x", "stat: cannot read file system information for '/x': No such file or directory")


# --- prune: decide -------------------------------------------------------------------------------


def container(name: str, *, running: bool = False, age: float = 10 * DAY, image: str = "sha256:base",
              volumes: tuple[str, ...] = (), networks: tuple[str, ...] = ("bridge",), size: int = 100
              ) -> dockerfacts.DockerContainer:  # fmt: skip
    return dockerfacts.DockerContainer(f"id-{name}", name, running, "running" if running else "exited",
                                 NOW - age, image, size, volumes, networks)  # fmt: skip


def image(image_id: str, *, tags: tuple[str, ...] = (), age: float = 10 * DAY, parent: str = "",
          size: int = 1000) -> dockerfacts.DockerImage:  # fmt: skip
    return dockerfacts.DockerImage(image_id, tags, NOW - age, size, parent)


def network(name: str, *, age: float = 10 * DAY) -> dockerfacts.DockerNetwork:
    return dockerfacts.DockerNetwork(f"net-{name}", name, NOW - age, name in dockerfacts.BUILTIN_NETWORKS)


BASE = image("sha256:base", tags=("local/busybox:1",))
FS = FsUsage("/var/lib/docker", 1000, 500, 500)


def facts(**kw: Any) -> dockerfacts.DockerFacts:
    defaults: dict[str, Any] = {"now": NOW, "root_dir": "/var/lib/docker", "disk": FS}
    return dockerfacts.DockerFacts(**{**defaults, **kw})


def plan_names(plan: prune.PrunePlan) -> dict[str, list[str]]:
    return {
        "containers": [c.name for c in plan.containers],
        "images": [i.id for i in plan.images],
        "networks": [n.name for n in plan.networks],
        "volumes": [v.name for v in plan.volumes],
    }


WEEK = 7 * 24 * 3600
PRUNE_CASES: list[tuple[str, prune.PruneOptions, dockerfacts.DockerFacts, dict[str, list[str]]]] = [
    (
        "a running container and its image stay; a stopped old one goes",
        prune.PruneOptions(WEEK),
        facts(containers=(container("web", running=True), container("old")), images=(BASE,)),
        {"containers": ["old"], "images": [], "networks": [], "volumes": []},
    ),
    (
        "a stopped container younger than the filter stays",
        prune.PruneOptions(WEEK),
        facts(containers=(container("young", age=HOUR),), images=(BASE,)),
        {"containers": [], "images": [], "networks": [], "volumes": []},
    ),
    (
        "dangling image goes, tagged unused image only with --all",
        prune.PruneOptions(WEEK),
        facts(images=(BASE, image("sha256:dangling"), image("sha256:tagged", tags=("x:1",)))),
        {"containers": [], "images": ["sha256:dangling"], "networks": [], "volumes": []},
    ),
    (
        "--all: every unused image, but not one a container uses",
        prune.PruneOptions(WEEK, all_images=True),
        facts(
            containers=(container("web", running=True),), images=(BASE, image("sha256:tagged", tags=("x:1",)))
        ),
        {"containers": [], "images": ["sha256:tagged"], "networks": [], "volumes": []},
    ),
    (
        "an image only a removed container used goes in the same run (with --all)",
        prune.PruneOptions(WEEK, all_images=True),
        facts(
            containers=(container("old", image="sha256:tagged"),),
            images=(image("sha256:tagged", tags=("x:1",)),),
        ),
        {"containers": ["old"], "images": ["sha256:tagged"], "networks": [], "volumes": []},
    ),
    (
        "an image younger than the filter stays",
        prune.PruneOptions(WEEK),
        facts(images=(image("sha256:fresh", age=HOUR),)),
        {"containers": [], "images": [], "networks": [], "volumes": []},
    ),
    (
        "the parent of an image that stays is kept",
        prune.PruneOptions(WEEK, all_images=True),
        facts(
            containers=(container("web", running=True, image="sha256:child"),),
            images=(image("sha256:parent", tags=("p:1",)), image("sha256:child", parent="sha256:parent")),
        ),
        {"containers": [], "images": [], "networks": [], "volumes": []},
    ),
    (
        "networks: builtin never, used (even by a stopped container that stays) kept, unused goes",
        prune.PruneOptions(WEEK),
        facts(
            containers=(container("stopped", age=HOUR, networks=("app_net",)),),
            networks=(
                network("bridge"),
                network("host"),
                network("app_net"),
                network("spare"),
                network("new", age=HOUR),
            ),
        ),
        {"containers": [], "images": [], "networks": ["spare"], "volumes": []},
    ),
    (
        "volumes never without --volumes",
        prune.PruneOptions(WEEK),
        facts(volumes=(dockerfacts.DockerVolume("data", 10),)),
        {"containers": [], "images": [], "networks": [], "volumes": []},
    ),
    (
        "--volumes: only volumes no remaining container mounts",
        prune.PruneOptions(WEEK, volumes=True),
        facts(
            containers=(
                container("db", running=True, volumes=("pgdata",)),
                container("old", volumes=("tmp",)),
            ),
            volumes=(
                dockerfacts.DockerVolume("pgdata", 10),
                dockerfacts.DockerVolume("tmp", 5),
                dockerfacts.DockerVolume("orphan", 7),
            ),
        ),
        {"containers": ["old"], "images": [], "networks": [], "volumes": ["tmp", "orphan"]},
    ),
    (
        "--if-disk-above: nothing when the disk is not fuller",
        prune.PruneOptions(WEEK, if_disk_above=50.0),
        facts(containers=(container("old"),)),
        {"containers": [], "images": [], "networks": [], "volumes": []},
    ),
    (
        "--if-disk-above: acts when it is",
        prune.PruneOptions(WEEK, if_disk_above=49.0),
        facts(containers=(container("old"),)),
        {"containers": ["old"], "images": [], "networks": [], "volumes": []},
    ),
]


@pytest.mark.parametrize(
    ("why", "options", "state", "expected"), PRUNE_CASES, ids=[c[0] for c in PRUNE_CASES]
)
def test_prune_decide(why: str, options: prune.PruneOptions, state: dockerfacts.DockerFacts,
                      expected: dict[str, list[str]]) -> None:  # fmt: skip
    assert plan_names(prune.decide(options, state)) == expected


def test_prune_empty_plan_says_why() -> None:
    plan = prune.decide(prune.PruneOptions(WEEK, if_disk_above=90.0), facts())
    assert plan.empty and "not above 90%" in plan.reason
    plan = prune.decide(
        prune.PruneOptions(WEEK), facts(images=(BASE,), containers=(container("w", running=True),))
    )
    assert plan.empty and plan.reason.startswith("nothing to reclaim") and "168h" in plan.reason


def test_prune_images_children_first_and_volumes_named_loudly() -> None:
    state = facts(images=(image("sha256:a"), image("sha256:b", parent="sha256:a")),
                  volumes=(dockerfacts.DockerVolume("keepme", 3),))  # fmt: skip
    plan = prune.decide(prune.PruneOptions(WEEK, volumes=True), state)
    assert [i.id for i in plan.images] == ["sha256:b", "sha256:a"]
    assert "VOLUMES" in plan.summary() and "keepme" in plan.summary()
    assert plan.reclaim == 2003


def test_prune_summary_names_what_would_go_with_sizes() -> None:
    """--check says what would go, by name and size, as --json lists it (not only counts)."""
    state = facts(
        containers=(container("old-web", size=2048),),
        images=(image("sha256:" + "d" * 64, size=5 * 1024 * 1024), image("sha256:e", tags=("team/app:1",))),
        networks=(network("teamapp_default"),),
    )
    plan = prune.decide(prune.PruneOptions(WEEK, all_images=True), state)
    text = plan.summary()
    assert text.startswith("1 container (old-web 2.0 kB), 2 images (")
    assert "<none> dddddddddddd 5.2 MB" in text and "team/app:1 1.0 kB" in text
    assert "1 network (teamapp_default)" in text and text.endswith("to reclaim")
    stopped = tuple(container(f"c{i}") for i in range(25))
    many = prune.decide(prune.PruneOptions(WEEK), facts(containers=stopped))
    assert "c19 100 B; … and 5 more" in many.summary() and "c20" not in many.summary()


def test_prune_leftovers_name_what_survived() -> None:
    plan = prune.decide(
        prune.PruneOptions(0), facts(containers=(container("old"),), images=(image("sha256:d"),))
    )
    after = facts(images=(image("sha256:d"),))
    assert prune.leftovers(plan, after) == ["image <none> d"]


def test_prune_parse_facts_from_real_shapes() -> None:
    inspect_c = [
        {
            "Id": "c1",
            "Name": "/old",
            "Created": "2024-01-01T00:00:00Z",
            "Image": "sha256:i1",
            "SizeRw": 524288,
            "State": {"Status": "exited", "Running": False},
            "Mounts": [{"Type": "volume", "Name": "v1"}, {"Type": "bind", "Source": "/srv"}],
            "NetworkSettings": {"Networks": {"shop_default": {}}},
            "HostConfig": {"NetworkMode": "default"},
        }
    ]
    inspect_i = [
        {"Id": "sha256:i1", "RepoTags": [], "Created": "2024-01-01T00:00:00Z", "Size": 9, "Parent": ""}
    ]
    nets = [
        {
            "Id": "n1",
            "Name": "bridge",
            "Created": "2024-01-01T00:00:00Z",
            "Driver": "bridge",
            "Scope": "local",
        },
        {"Id": "n2", "Name": "mine", "Created": "2024-01-01T00:00:00Z", "Driver": "bridge", "Scope": "local"},
    ]
    df = {
        "Images": [{"ID": "sha256:i1", "UniqueSize": "1.5MB"}],
        "Volumes": [{"Name": "v1", "Size": "2kB"}],
        "BuildCache": [{"ID": "b1", "Size": "3MB", "InUse": "false", "Shared": "true"}],
    }
    out = "\n".join([
        "@@now", "1800000000", "@@root /var/lib/docker", "@@fs /var/lib/docker", "100 50 40 4096",
        "@@containers", json.dumps(inspect_c), "@@images", json.dumps(inspect_i),
        "@@networks", json.dumps(nets), "@@df", json.dumps(df),
    ])  # fmt: skip
    parsed = dockerfacts.parse_facts(out)
    assert parsed.error == ""
    assert parsed.containers[0].volumes == ("v1",) and parsed.containers[0].networks == ("shop_default",)
    assert parsed.images[0].size == 1_500_000 and parsed.images[0].dangling
    assert [n.builtin for n in parsed.networks] == [True, False]
    assert parsed.volumes == (dockerfacts.DockerVolume("v1", 2000),)
    assert parsed.build_cache == (dockerfacts.BuildCacheEntry("b1", 3_000_000, False, True),)
    assert parsed.disk is not None and parsed.disk.path == "/var/lib/docker"


@pytest.mark.parametrize(
    ("output", "error"),
    [
        ("@@error\nCannot connect to the Docker daemon\n", "Cannot connect"),
        ("@@now\n1\n@@root /d\n@@df\n{}\n@@containers\nnot json\n", "not JSON"),
        ("@@now\n1\n@@root /d\n", "no 'df' section"),
    ],
)
def test_prune_parse_facts_errors(output: str, error: str) -> None:
    assert error in dockerfacts.parse_facts(output).error


@pytest.mark.parametrize(
    ("older", "pct", "message"),
    [
        ("-1h", None, "--older-than"),
        ("soon", None, "--older-than"),
        ("1h", "101", "--if-disk-above"),
        ("1h", "-5", "--if-disk-above"),
        ("1h", "lots", "--if-disk-above"),
    ],
)
def test_prune_bad_flags(older: str, pct: str | None, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        prune.options_from_flags(older, False, False, pct)


# --- disk-cleanup: decide ------------------------------------------------------------------------


def disk_facts(files: list[tuple[str, float]], journal: bool = False,
               archived: tuple[tuple[float, int], ...] = ()) -> disk.DiskFacts:  # fmt: skip
    backups = tuple(disk.BackupFile(name, NOW - age_days * DAY, 10) for name, age_days in files)
    return disk.DiskFacts(NOW, (), {}, "/backups", "", backups, journal, archived, False)


BACKUP_CASES = [
    ("old files go, the newest K stay", [("a", 1), ("b", 8), ("c", 9), ("d", 30)], 7, 1, ["b", "c", "d"]),
    ("keep-newest protects even old files", [("a", 20), ("b", 30), ("c", 40)], 7, 2, ["c"]),
    ("nothing older than the age", [("a", 1), ("b", 2)], 7, 0, []),
    ("keep more than exist", [("a", 100)], 7, 5, []),
    ("age 0 with keep 1: all but the newest", [("a", 0.5), ("b", 1)], 0, 1, ["b"]),
]


@pytest.mark.parametrize(
    ("why", "files", "age", "keep", "deleted"), BACKUP_CASES, ids=[c[0] for c in BACKUP_CASES]
)
def test_decide_backups(
    why: str, files: list[tuple[str, float]], age: float, keep: int, deleted: list[str]
) -> None:
    plan = disk.decide_backups(disk_facts(files), age, keep)
    assert sorted(f.path for f in plan.delete) == deleted


def test_decide_backups_without_a_directory_says_why() -> None:
    facts_ = disk.DiskFacts(NOW, (), {}, None, "backup_dir /x: No such file or directory")
    plan = disk.decide_backups(facts_, 7, 1)
    assert plan.delete == () and "No such file" in plan.reason


PARTS = [
    # configured dir, facts' resolved dir, files (name, days old), step status or "plan", summary
    ("no backup_dir", None, None, [], Status.SKIPPED, "no backup_dir configured"),
    ("unusable", "/b", None, [], Status.FAILED, "cannot"),
    ("nothing old", "/b", "/backups", [("a", 1)], Status.OK, "none older than 7 days"),
    ("old files", "/b", "/backups", [("a", 1), ("b", 9), ("c", 10)], "plan",
     "delete /backups: 2 file(s) older than 7 days"),
]  # fmt: skip


@pytest.mark.parametrize(("why", "configured", "resolved", "files", "status", "words"), PARTS,
                         ids=[c[0] for c in PARTS])  # fmt: skip
def test_backups_part(why: str, configured: str | None, resolved: str | None,
                      files: list[tuple[str, float]], status: Any, words: str) -> None:  # fmt: skip
    before = replace(disk_facts(files), backup_dir=resolved, backup_error="" if resolved else "cannot")
    if configured is None:
        before = replace(before, backup_error="")
    facts_ = disk.CleanupFacts(disk.Places(configured, "*", None), 7, 1, before)
    part = disk.backups_part(facts_)
    if status == "plan":
        assert isinstance(part, disk.Part)
        (change,) = part.plan.changes
        assert change.step == "backups" and change.summary.startswith(words) and change.own_steps
        assert sorted(f["path"] for f in change.data["files"]) == ["b", "c"]
        assert part.note == "2 backup file(s)"
    else:
        assert isinstance(part, disk.Verdict)
        assert part.step == "backups" and part.status == status and words in part.message


def test_journal_and_final_parts() -> None:
    old = disk_facts([], True, ((NOW - 9 * DAY, 5),))
    part = disk.journal_part(old, 7)
    assert isinstance(part, disk.Part)
    assert part.plan.changes[0].summary.startswith("run journalctl --vacuum-time: 1 archived journal file")
    assert isinstance(disk.journal_part(disk_facts([]), 7), disk.Verdict)
    facts_ = disk.CleanupFacts(disk.Places("/b", "*", None), 7, 1, old)
    final = disk.final_part(facts_, [])
    assert isinstance(final, disk.Verdict) and final.message.startswith("nothing to clean up; disk: ")
    final = disk.final_part(facts_, ["journal vacuum", "Docker prune"])
    assert isinstance(final, disk.Part)
    assert final.plan.changes[0].summary.startswith("clean up: journal vacuum, Docker prune; disk: ")
    assert "disk_before" in final.plan.changes[0].data


@pytest.mark.parametrize(
    ("journal", "archived", "vacuum"),
    [
        (False, (), False),
        (True, (), False),
        (True, ((NOW - 2 * DAY, 5),), False),
        (True, ((NOW - 9 * DAY, 5),), True),
    ],
)
def test_decide_journal(journal: bool, archived: tuple[tuple[float, int], ...], vacuum: bool) -> None:
    assert disk.decide_journal(disk_facts([], journal, archived), 7)[0] is vacuum


@pytest.mark.parametrize(
    "value", ["/", "//", "relative/dir", "/etc", "/var/", "/srv/../etc", "/srv/./x", "/var/lib"]
)
def test_backup_dir_refused(value: str) -> None:
    with pytest.raises(UsageError, match="backup_dir"):
        diskfacts.check_backup_dir(value, "h1")


@pytest.mark.parametrize(
    ("value", "normal"),
    [("/srv/backups", "/srv/backups"), ("/backups/", "/backups"), ("/srv//backups", "/srv/backups")],
)
def test_backup_dir_accepted(value: str, normal: str) -> None:
    assert diskfacts.check_backup_dir(value, "h1") == normal


def test_disk_parse_facts_backups_and_symlinked_dir() -> None:
    places = disk.Places("/srv/backups", "*", None)
    out = ("@@now\n100\n@@fs /\n100 50 40 4096\n@@du /srv/backups\n123\n"
           "@@backupdir /mnt/real\n50.5\t10\tdb-1.sql.gz\x0060.0\t20\tsub/with space.gz\x00\n")  # fmt: skip
    parsed = diskfacts.parse_facts(out, places)
    assert parsed.backup_dir == "/mnt/real"
    assert parsed.backups == (
        disk.BackupFile("db-1.sql.gz", 50.5, 10),
        disk.BackupFile("sub/with space.gz", 60.0, 20),
    )
    assert parsed.usage == {"/srv/backups": 123}
    root = diskfacts.parse_facts("@@now\n1\n@@backupdir /\n", places)
    assert root.backup_dir is None and "system directory" in root.backup_error


@pytest.mark.parametrize(("option", "value"), [("max_age_days", -1), ("keep_newest", -2)])
def test_disk_cleanup_negative_numbers(option: str, value: int) -> None:
    options = disk.CleanupOptions(**{option: value})
    with pytest.raises(UsageError, match="not negative"):
        disk.DiskCleanup(options).validate(Host("h1", {}, (), "inv.yml"))


# --- health: evaluate ----------------------------------------------------------------------------


def ctr(name: str, state: str = "running", health_: str | None = "healthy", output: str = "") -> Container:
    return Container(f"{name}-id0000000000", name, state, "", health_, output, "sha256:x")


@pytest.mark.parametrize(
    ("containers", "colour", "value"),
    [
        ([ctr("api-1")], health.GREEN, "running"),
        ([ctr("api-1", health_=None)], health.GREEN, "running"),
        ([ctr("api-1", health_="starting")], health.YELLOW, "running"),
        ([ctr("api-1", health_="unhealthy", output="wget: 404")], health.RED, "unhealthy"),
        ([ctr("api-1", state="exited", health_=None)], health.RED, "exited"),
        ([ctr("api-1"), ctr("api-2", state="exited")], health.RED, "exited"),
        ([], health.RED, "missing"),
    ],
)
def test_service_state(containers: list[Container], colour: str, value: str) -> None:
    check = health.service_state("api", containers)
    assert (check.colour, check.value) == (colour, value)


def settings(**kw: Any) -> health.Settings:
    host = Host("h1", {"compose_project_dir": "/srv/shop", **kw}, (), "inv.yml")
    return health.Settings.from_host(host)


@pytest.mark.parametrize(
    ("percent_used", "colour"),
    [(50, health.GREEN), (85, health.YELLOW), (95, health.RED), (90, health.YELLOW)],
)
def test_disk_check_colours(percent_used: int, colour: str) -> None:
    fs = FsUsage("/", 100, percent_used, 100 - percent_used)
    state = health.HealthFacts(NOW, filesystems=(("/", fs),))
    [check] = health.disk_checks(settings(), state)
    assert (check.colour, check.value, check.threshold) == (colour, float(percent_used), 90.0)


@pytest.mark.parametrize(
    ("age_hours", "colour"), [(1, health.GREEN), (25, health.GREEN), (26, health.RED), (None, health.RED)]
)
def test_backup_check(age_hours: float | None, colour: str) -> None:
    newest = None if age_hours is None else NOW - age_hours * HOUR
    check = health.backup_check("backup age", 25, NOW, newest, "no backup file")
    assert check.colour == colour
    assert check.to_dict()["threshold"] == 25


def test_evaluate_carries_every_check() -> None:
    probes = [{"name": "pg", "tcp": "db:5432"}, {"name": "s3", "http": "http://s3/"}]
    s = settings(api_health_url="http://127.0.0.1:8080/health", health_log_errors_max=3, health_probes=probes)
    state = health.HealthFacts(
        NOW, compose="v2",
        containers=(("api", ctr("api-1")), ("worker", ctr("worker-1", health_=None))),
        log_errors={"api-1-id0000": 0, "worker-1-id0": 5},
        http=(7, "connection refused"), probes={0: (0, ""), 1: (22, "404")},
    )  # fmt: skip
    checks = {c.name: c for c in health.evaluate(s, state)}
    assert checks["service api"].colour == health.GREEN
    assert checks["log errors api"].colour == health.GREEN
    assert (checks["log errors worker"].colour, checks["log errors worker"].value) == (health.RED, 5)
    assert checks["http http://127.0.0.1:8080/health"].colour == health.RED
    assert checks["probe pg"].colour == health.GREEN
    assert checks["probe s3"].colour == health.RED and "404" in checks["probe s3"].detail


def test_health_checks_each_service_by_its_own_url() -> None:
    """health_urls: every checked service's own URL is fetched on the host and is a check of its
    own; the api's stays api_health_url; --service narrows them."""
    urls = {"worker": "http://127.0.0.1:8091/health", "api": "http://127.0.0.1:8080/health"}
    s = settings(api_service="api", api_health_url=urls["api"], health_urls=urls)
    assert s.service_urls == (("worker", urls["worker"]),)
    command = health.facts_command(s)
    assert "@@http:worker $rc" in command and "curl -fsS -m 5 http://127.0.0.1:8091/health" in command
    parsed = health.parse_facts("@@now\n100\n@@http 0\nok\n@@http:worker 22\n404 Not Found\n")
    checks = {c.name: c for c in health.evaluate(s, parsed)}
    assert checks["http http://127.0.0.1:8080/health"].colour == health.GREEN
    worker = checks["http http://127.0.0.1:8091/health"]
    assert worker.colour == health.RED and "404" in worker.detail
    only_api = health.Settings.from_host(Host("h1", {"compose_project_dir": "/srv/shop", "health_urls": urls,
                                                      "api_health_url": urls["api"]}, (), "inv.yml"), ["api"])
    assert only_api.service_urls == ()


def test_health_unknown_service_and_configuration_problem_from_compose() -> None:
    """The services compose's configuration defines are read (for --service nosuch); a problem with
    the configuration is said in compose's words."""
    out = "@@now\n100\n@@compose v2\n@@services 0\napi\nworker\n@@ps 0\n@@inspect\n"
    assert health.parse_facts(out).services == ("api", "worker")
    bad = "@@now\n100\n@@compose v2\n@@services 1\nno configuration file provided: not found\n@@ps 0\n"
    parsed = health.parse_facts(bad)
    assert parsed.error.startswith("compose configuration: no configuration file provided: not found (")
    [check] = health.service_checks(settings(), parsed)
    assert (check.colour, check.value) == (health.RED, "misconfigured") and "unhealthy" not in check.detail


def test_health_parse_facts() -> None:
    inspect_ = [
        {
            "Id": "abcdef1234567890",
            "Name": "/shop-api-1",
            "State": {"Status": "exited"},
            "Config": {"Labels": {"com.docker.compose.service": "api"}},
        }
    ]
    out = "\n".join(["@@now", "100", "@@compose v2", "@@ps 0", "abcdef1234567890",
                     "@@inspect", json.dumps(inspect_),
                     "@@logs abcdef1234567890", "4", "@@http 0", "ok", "@@fs /", "100 10 80 1024",
                     "@@fs /gone", "does not exist", "@@backup /b", "50.5", "@@probe 0 1", ""])  # fmt: skip
    parsed = health.parse_facts(out)
    assert parsed.containers[0][0] == "api" and parsed.containers[0][1].state == "exited"
    assert parsed.log_errors == {"abcdef123456": 4}
    assert parsed.http == (0, "ok") and parsed.newest_backup == 50.5 and parsed.probes == {0: (1, "")}
    assert isinstance(parsed.filesystems[0][1], FsUsage) and parsed.filesystems[1][1] == "does not exist"


@pytest.mark.parametrize(
    ("host_vars", "services", "message"),
    [
        ({"health_disk_max_pct": 120}, (), "health_disk_max_pct"),
        ({"health_disk_warn_pct": 95, "health_disk_max_pct": 90}, (), "above"),
        ({"health_backup_max_age_hours": -1}, (), "not negative"),
        ({"backup_dir": "/"}, (), "system directory"),
        ({"health_services": ["api"]}, ("nosuch",), "unknown service nosuch"),
        ({}, ("bad name!",), "not a compose service name"),
        ({"health_probes": [{"name": "x", "tcp": "nohost"}]}, (), "host:port"),
        ({"health_probes": [{"name": "x", "http": "ftp://x"}]}, (), "http"),
        ({"backup_s3_url": "bucket/prefix"}, (), "s3://"),
        ({"health_error_pattern": "("}, (), "health_error_pattern"),
    ],
)
def test_health_bad_input(host_vars: dict[str, Any], services: tuple[str, ...], message: str) -> None:
    host = Host("h1", {"compose_project_dir": "/srv/shop", **host_vars}, (), "inv.yml")
    with pytest.raises(UsageError, match=message):
        health.Health(services).validate(host)


ARCHIVING = {"failed_count": 0, "last_archived_wal": "000000010000000000000009",
             "last_archived_time": "2026-01-02 10:00:00+00", "failing": False}  # fmt: skip


@pytest.mark.parametrize(
    ("answer", "colour", "words"),
    [
        ((0, json.dumps({"archive_mode": "on", "archiver": ARCHIVING})), health.GREEN, "no failures"),
        ((0, json.dumps({"archive_mode": "on", "archiver": {**ARCHIVING, "failed_count": 2}})),
         health.GREEN, "archiver failed before: 2 failure(s)"),
        ((0, json.dumps({"archive_mode": "on", "archiver": {
            **ARCHIVING, "failed_count": 4, "last_failed_wal": "00000001000000000000000A",
            "last_failed_time": "2026-01-02 11:00:00+00", "failing": True}})),
         health.RED, "archiver is FAILING: 4 failure(s), last on 00000001000000000000000A"),
        ((0, json.dumps({"archive_mode": "off", "archiver": ARCHIVING})),
         health.YELLOW, "archive_mode is off"),
        ((2, "psql: error: connection to server failed"), health.RED, "psql failed: psql: error"),
        ((0, "not json"), health.RED, "not JSON"),
        (None, health.RED, "not run"),
    ],
)  # fmt: skip
def test_archiver_check(answer: tuple[int, str] | None, colour: str, words: str) -> None:
    check = health.archiver_check(answer)
    assert check.name == "postgres archiver" and check.colour == colour
    assert words in check.detail


@pytest.mark.parametrize(
    ("host_vars", "checked"),
    [
        ({}, False),
        ({"wal_archive_dir": "/var/lib/postgresql/wal-archive"}, True),
        ({"wal_archive_dir": "/a", "health_pg_archiver": False}, False),
        ({"health_pg_archiver": True}, True),
    ],
)
def test_health_checks_the_archiver_of_wal_archiving_hosts(host_vars: dict[str, Any], checked: bool) -> None:
    s = settings(**host_vars)
    assert (s.pg_archiver is not None) is checked
    assert ("@@pgarchiver" in health.facts_command(s)) is checked
    parsed = health.parse_facts("@@now\n100\n@@pgarchiver 0\n{}\n" if checked else "@@now\n100\n")
    names = [c.name for c in health.evaluate(s, parsed)]
    assert ("postgres archiver" in names) is checked


def test_health_pg_archiver_must_be_a_boolean() -> None:
    host = Host("h1", {"compose_project_dir": "/srv/shop", "health_pg_archiver": "yes"}, (), "inv.yml")
    with pytest.raises(UsageError, match="health_pg_archiver must be true or false"):
        health.Health().validate(host)


@pytest.mark.parametrize("marker", ["15/main/PG_VERSION", "data/global/pg_control"])
def test_a_backup_dir_holding_a_database_is_refused(tmp_path: Any, marker: str) -> None:
    """backup_dir set one level too high (/var/lib/postgresql instead of its backups folder) planned
    to delete the cluster's files. The facts command, run by a real sh, finds the data directory
    and refuses; an ordinary backup folder is listed as before."""
    from remediations.core.remote import LocalRemote

    backups = tmp_path / "pg"
    (backups / marker).parent.mkdir(parents=True)
    (backups / marker).write_text("15\n")
    (backups / "old.dump").write_text("dump")
    remote = LocalRemote(Host("local", {"ansible_connection": "local"}, (), "test"))
    places = disk.Places(str(backups), "*", None)
    facts = disk.gather(remote, places)
    assert facts.backup_dir is None and not facts.backups
    assert "holds a PostgreSQL data directory" in facts.backup_error and marker in facts.backup_error
    (backups / marker).unlink()
    facts = disk.gather(remote, places)
    assert facts.backup_dir is not None and [b.path for b in facts.backups] == ["old.dump"]


@pytest.mark.parametrize(
    ("given", "services"),
    [
        (["api"], ("api",)),
        (["api", "worker"], ("api", "worker")),  # --service api --service worker
        (["api,worker"], ("api", "worker")),  # the comma list of before
        (["api, worker", "db"], ("api", "worker", "db")),
        ([" , "], ()),
        ([], ()),
    ],
)
def test_health_service_repeats_or_takes_a_comma_list(given: list[str], services: tuple[str, ...]) -> None:
    values = health.Health.params.parse({"service": given})
    assert health.Health.from_values(values).services == services  # type: ignore[attr-defined]
    assert health.Health.params.repeatable() == ["service", "unit"]
