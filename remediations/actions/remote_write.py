"""One writer of files on a host from a stream: the new content replaces the file whole or not at all.

`cat > tmp && mv tmp file` installs whatever arrived: when the controller dies or the connection is
cut mid-stream, `cat` sees an early end of input, exits 0, and the rename puts a half-written file
in place. Here a small POSIX sh script on the host reads the announced number of bytes into a temp
file beside the target, checks the byte count and the SHA-256 before anything else happens, then
(only then) takes the backup the caller asked for, gives the temp file its owner and mode, flushes it
to disk, renames it over the target and flushes the directory. On any failure the temp file (and a
backup it made) is removed and the script exits with a code of its own; the controller raises a
HostError naming the file and saying that nothing was changed.

The size and the checksum travel on the first line of stdin, not as arguments: a digest of a file of
secrets is not for `ps` to show. The temp file has a fixed name (`FILE.remediations-tmp`), so one left
by a writer killed on the host itself is removed by the next write.
"""

from __future__ import annotations

import hashlib
import shlex
from dataclasses import dataclass

from remediations.core.errors import CommandResult, HostError
from remediations.core.remote import TIMED_OUT, Remote

TEMP_SUFFIX = ".remediations-tmp"
# Exit codes of the script; each means the target was not touched.
INCOMPLETE = 65  # fewer or other bytes than announced arrived
NO_DIGEST = 69  # neither sha256sum nor openssl on the host
STEP_FAILED = 73  # mkdir, chown, chmod, the backup or the rename failed
INTERRUPTED = 75  # the script got a signal (HUP, INT, TERM, PIPE)
MIN_RATE = 1024 * 1024  # bytes/s a connection is assumed to reach at worst, for the deadline

# "$1" target, "$2" mode ("" keeps the target's, 600 for a new file), "$3" owner uid:gid ("" keeps
# the target's), "$4" backup path ("" none), "$5" backup mode ("" the target's own, with cp -p),
# "$6" "1" to create the target's directory. stdin: "SIZE SHA256\n" then exactly SIZE bytes.
# Every process the script starts costs its host about a millisecond of CPU (a firewall state file is
# written on every host of a fan-out): a successful write of an existing file starts head (twice: the
# probe for -c), the digest tool, one stat, sync, mv and sync; the rest are shell builtins, and the
# steps a write does not need (mkdir of a folder that exists, rm of a temp file that does not, chmod
# or chown to what the temp file already has, counting the bytes of a stream whose digest matches)
# are not run. The checks are the same: the digest covers every byte, the count only names the
# failure ("cut" or "altered").
SCRIPT = r"""
path=$1 mode=$2 owner=$3 backup=$4 backup_mode=$5 make_dir=$6
tmp="$path.remediations-tmp"
case $path in */*) dir=${path%/*}; dir=${dir:-/} ;; *) dir=. ;; esac
made_backup=
umask 077
say() { printf 'remediations-write: %s: %s; %s was not changed\n' "$path" "$1" "$path" >&2; }
clean() { rm -f -- "$tmp"; if [ -n "$made_backup" ]; then rm -f -- "$backup"; fi; }
fail() { clean; say "$2"; exit "$1"; }
trap 'clean; exit 75' HUP INT TERM PIPE
if command -v sha256sum >/dev/null 2>&1; then
  digest() { d=$(sha256sum < "$1") && printf '%s\n' "${d%% *}"; }
elif command -v openssl >/dev/null 2>&1; then
  digest() { openssl dgst -sha256 < "$1" | awk '{print $NF}'; }
else
  cat > /dev/null
  fail 69 "neither sha256sum nor openssl is installed, so the content cannot be checked"
fi
if ! read -r size sum; then
  cat > /dev/null
  fail 65 "the stream ended before its header"
fi
case $size in ''|*[!0-9]*) cat > /dev/null; fail 65 "bad header: size '$size'";; esac
if [ "$make_dir" = 1 ] && [ ! -d "$dir" ]; then mkdir -p -- "$dir" || fail 73 "cannot create $dir"; fi
if [ -e "$tmp" ] || [ -L "$tmp" ]; then rm -f -- "$tmp" || fail 73 "cannot remove the old temp file $tmp"; fi
if head -c 0 < /dev/null > /dev/null 2>&1; then
  (set -C; head -c "$size" > "$tmp") || fail 73 "cannot write the temp file $tmp"
else
  (set -C; cat > "$tmp") || fail 73 "cannot write the temp file $tmp"
fi
if [ "$(digest "$tmp")" != "$sum" ]; then
  got=$(wc -c < "$tmp" | tr -d ' ')
  [ "$got" = "$size" ] || fail 65 "the stream was cut: $got of $size bytes arrived"
  fail 65 "the content arrived altered: its SHA-256 differs"
fi
# the temp file was made under umask 077: mode 600, owned by whoever runs this
have_mode=600 have_owner=
if [ -e "$path" ]; then
  info=$(stat -c '%a %u:%g' -- "$path" "$tmp") || fail 73 "cannot read the mode and owner of $path"
  { read -r path_mode path_owner; read -r have_mode have_owner; } <<EOF
$info
EOF
  [ -n "$mode" ] || mode=$path_mode
  [ -n "$owner" ] || owner=$path_owner
fi
if [ -n "$owner" ] && [ "$owner" != "$have_owner" ]; then
  chown -- "$owner" "$tmp" || fail 73 "cannot give the temp file owner $owner"
fi
if [ "${mode:-600}" != "$have_mode" ]; then
  chmod -- "${mode:-600}" "$tmp" || fail 73 "cannot give the temp file mode ${mode:-600}"
fi
if [ -n "$backup" ] && [ -e "$path" ]; then
  made_backup=1
  if [ -n "$backup_mode" ]; then
    rm -f -- "$backup" && cp -- "$path" "$backup" && chmod -- "$backup_mode" "$backup" &&
      chown -- "$(stat -c %u:%g -- "$path")" "$backup" && touch -r "$path" "$backup" ||
      fail 73 "cannot make the backup $backup"
  else
    cp -p -- "$path" "$backup" || fail 73 "cannot make the backup $backup"
  fi
  sync -- "$backup" 2>/dev/null || sync
fi
sync -- "$tmp" 2>/dev/null || sync
mv -f -- "$tmp" "$path" || fail 73 "cannot rename $tmp over it"
made_backup=
trap - HUP INT TERM PIPE
sync -- "$dir" 2>/dev/null || sync
exit 0
"""


@dataclass(frozen=True)
class Write:
    """One file to write: where, the bytes, and what the new file and its backup keep."""

    path: str
    data: bytes
    mode: str = ""  # octal, e.g. "600"; "" keeps the target's (600 for a new file)
    owner: str = ""  # "uid:gid"; "" keeps the target's
    backup: str | None = None  # a copy of the old file taken just before the rename
    backup_mode: str | None = None  # the backup's mode; None: the target's own (cp -p)
    make_dir: bool = False  # create the target's directory when missing
    then: str = ""  # shell text run once the file is installed (pruning old backups); failure ignored

    @property
    def header(self) -> bytes:
        return f"{len(self.data)} {hashlib.sha256(self.data).hexdigest()}\n".encode()

    @property
    def stdin(self) -> bytes:
        return self.header + self.data

    def command(self) -> str:
        """Shell text that reads `stdin` and installs it (or fails with nothing changed)."""
        install = shlex.join(
            ["sh", "-c", SCRIPT, "remediations-write", self.path, self.mode, self.owner,
             self.backup or "", self.backup_mode or "", "1" if self.make_dir else ""]
        )  # fmt: skip
        # `then` only after an install that succeeded, and never turning it into a failure
        return f"{install} && {{ ( {self.then}\n) </dev/null || true; }}" if self.then else install

    def deadline(self, base: float = 30.0) -> float:
        return base + len(self.data) / MIN_RATE


def explain(write: Write, result: CommandResult) -> str:
    """Pure: the one line for a failed write, from the script's exit code and its own message."""
    said = [line for line in result.stderr.splitlines() if line.startswith("remediations-write: ")]
    detail = said[-1].removeprefix(f"remediations-write: {write.path}: ") if said else ""
    detail = detail.removesuffix(f"; {write.path} was not changed")
    if result.exit_code == TIMED_OUT:
        return (f"writing {write.path} did not finish within {write.deadline():.0f}s; the file is either the "
                "old one or the new one, never a part of it")  # fmt: skip
    if result.exit_code in (INCOMPLETE, NO_DIGEST, STEP_FAILED, INTERRUPTED) and detail:
        return f"writing {write.path} failed (exit {result.exit_code}): {detail}; nothing was changed"
    if result.exit_code == INTERRUPTED:
        return f"writing {write.path} was interrupted on the host; nothing was changed"
    tail = result.tail() or "no output"
    return f"writing {write.path} failed (exit {result.exit_code}): {tail}"


def write(remote: Remote, job: Write) -> CommandResult:
    """Install `job.data` at `job.path` on the host, whole or not at all; HostError when not."""
    try:
        result = remote.run(job.command(), stdin=job.stdin, timeout=job.deadline())
    except (OSError, EOFError) as exc:
        raise HostError(
            f"writing {job.path}: the connection broke while sending it ({exc or type(exc).__name__}); "
            "the file is either the old one or the new one, never a part of it"
        ) from None
    if not result.ok:
        raise HostError(explain(job, result), result)
    return result

