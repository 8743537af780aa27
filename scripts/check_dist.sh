#!/usr/bin/env bash
# Proves the release artifacts install and work: scripts/build_dist builds the sdist and the
# manylinux abi3 wheel (from a copy of the tree; nothing lands in the work tree), or
# PGJOB_DIST_DIR names a directory where it already did.  Then, in fresh environments:
#   - the whole test suite against the wheel installed into a venv of $PYTHON (not the
#     source tree), and mypy --strict on a user program against the installed package;
#   - on each Python of PGJOB_DIST_PYTHONS ("3.9=/path/to/python 3.14=sid:/opt/.../python",
#     sid: inside scripts/sid_chroot), the wheel installed by that Python's pip into a fresh
#     directory and a short subset (tests/common tests/cli) run against it: the abi3 wheel
#     built once serves every version;
#   - the sdist installs (compiling the extension) and runs `pgjob run`.
# Target: under ~4 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

PYTHON=${PYTHON:-python3}
work=$(mktemp -d "${TMPDIR:-/tmp}/pgjob-dist.XXXXXX")
sid_work=
trap 'rm -rf "$work" ${sid_work:+"$sid_work"}' EXIT
# Some tests run processes as an unprivileged user: they must reach the copied tests and venv.
chmod 755 "$work"
start=$SECONDS

echo "check_dist: copying the tree (tracked and unignored files) to $work/src"
mkdir -p "$work/src"
git ls-files -z --cached --others --exclude-standard | xargs -0 -I{} sh -c '[ -e "{}" ] && printf "%s\0" "{}"' \
    | tar --null -T - -cf - | tar -xf - -C "$work/src"

if [ -n "${PGJOB_DIST_DIR:-}" ]; then
    dist=$PGJOB_DIST_DIR
else
    echo "check_dist: scripts/build_dist (the sdist, then the manylinux wheel from it)"
    dist=$work/dist
    PYTHON="$PYTHON" python3 scripts/build_dist --only sdist,linux --outdir "$dist" >"$work/build.log" 2>&1 \
        || { tail -40 "$work/build.log"; exit 1; }
fi
sdist=$(ls "$dist"/pgjob-*.tar.gz)
wheel=$(ls "$dist"/pgjob-*-cp39-abi3-manylinux*_x86_64.whl)
echo "check_dist: testing $(basename "$sdist") and $(basename "$wheel")"

# The wheel must carry the typing files and the CLI, and nothing from the test tree.
"$PYTHON" - "$wheel" <<'PY'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
for required in ("pgjob/py.typed", "pgjob/_jobobject.pyi", "pgjob/__main__.py", "pgjob/_cli.py",
                 "pgjob/_jobobject.abi3.so"):
    assert required in names, f"{required} missing from the wheel"
assert not [n for n in names if n.startswith("pgjob/_jobobject.cpython")], names
assert not [n for n in names if n.startswith("tests/")], "tests leaked into the wheel"
if sys.platform.startswith("linux"):
    # pgjob-helper, the program the Linux helper processes exec, next to the extension.
    info = zipfile.ZipFile(sys.argv[1]).getinfo("pgjob/pgjob-helper")  # KeyError: missing
    mode = info.external_attr >> 16
    assert mode & 0o111 == 0o111, f"pgjob/pgjob-helper in the wheel is not executable: {oct(mode)}"
entry = [n for n in names if n.endswith("entry_points.txt")]
assert entry, "no entry_points.txt: the pgjob console script would be missing"
PY
tar -tzf "$sdist" >"$work/sdist.txt"  # (not piped into grep -q: pipefail would see tar's SIGPIPE)
for required in src/jobobject/jobobject.h src/_jobobject.c LICENSE CHANGELOG.md src/pgjob/_jobobject.pyi \
        src/helper/helper.h src/helper/main.c src/helper/init.c; do
    grep -q "/$required\$" "$work/sdist.txt" || { echo "$required missing from the sdist"; exit 1; }
done

echo "check_dist: fresh venv from the wheel"
"$PYTHON" -m venv "$work/venv-wheel"
vw="$work/venv-wheel/bin/python"
requirements=(pytest mypy)
[ -f "$work/src/requirements-test.txt" ] && requirements+=(-r "$work/src/requirements-test.txt")
"$vw" -m pip install -q --disable-pip-version-check "$wheel" "${requirements[@]}"
# Tests from a copy outside the source tree: `import pgjob` must find the installed wheel.
# (scripts/ too: some tests load helper scripts from there; docs/ and README.md: test_docs runs their code blocks.)
mkdir -p "$work/run" && cp -r "$work/src/tests" "$work/src/examples" "$work/src/scripts" \
    "$work/src/pyproject.toml" "$work/src/docs" "$work/src/README.md" "$work/run/"
# tests/linux hands owner processes run by other interpreters/users PYTHONPATH=<tests>/../src:
# give them the wheel's installed package there, so they too run what the wheel installed.
mkdir -p "$work/run/src"
cp -r "$("$vw" -c 'import os, pgjob; print(os.path.dirname(pgjob.__file__))')" "$work/run/src/pgjob"
# The init check, for every installed copy (the wheel's and the sdist's venvs, each other
# Python's --target install): a Job's PID 1 is that copy's pgjob-helper, and it works.
cat >"$work/run/init_check.py" <<'PY'
import os, sys, time
import pgjob
from pgjob import _jobobject, _linux_helpers
helper = _linux_helpers.helper_path()
where = sys.argv[1]
assert where in pgjob.__file__ and where in helper and os.access(helper, os.X_OK), (pgjob.__file__, helper)
assert os.path.basename(_jobobject.__file__) == "_jobobject.abi3.so", _jobobject.__file__
with pgjob.Job(mechanism="pid_namespace", on_unavailable="raise") as job:
    # Job() returns from inside the init's execve: give it a moment to switch programs.
    deadline = time.monotonic() + 10
    while os.readlink(f"/proc/{job._impl._init.pid}/exe") != helper:
        assert time.monotonic() < deadline, os.readlink(f"/proc/{job._impl._init.pid}/exe")
        time.sleep(0.01)
    assert job.popen(["sh", "-c", "exit 5"]).wait(30) == 5
print(f"check_dist: Python {sys.version.split()[0]}: the installed init works:", helper)
PY
(
    cd "$work/run"
    unset PYTHONPATH
    "$vw" -c "import pgjob, sys; assert '/venv-wheel/' in pgjob.__file__, pgjob.__file__; print('check_dist: testing', pgjob.__file__)"
    "$work/venv-wheel/bin/pgjob" --version
    # The installed init: a Job's PID 1 is the wheel's own pgjob-helper, and it works.
    "$vw" init_check.py /venv-wheel/
    "$vw" -m pytest tests -q -p no:cacheprovider -ra -m "not stress"
    # A user's view: mypy --strict on their program against the installed package, no config.
    "$work/venv-wheel/bin/mypy" --strict --no-incremental --config-file /dev/null examples/typed_usage.py
)

subset=(tests/common tests/cli -q -p no:cacheprovider -ra -m "not stress")
for entry in ${PGJOB_DIST_PYTHONS:-}; do
    ver=${entry%%=*} py=${entry#*=}
    echo "check_dist: Python $ver: pip install --target a fresh directory, then ${subset[*]:0:2}"
    if [[ "$py" == sid:* ]]; then
        # Inside the chroot: its /tmp is $sid/tmp here, so the run directory is made there.
        sid=$(bash scripts/sid_chroot path)
        [ -n "$sid_work" ] || { sid_work=$(mktemp -d "$sid/tmp/pgjob-dist.XXXXXX"); chmod 755 "$sid_work";
                                cp -r "$work/run" "$sid_work/run"; cp "$wheel" "$sid_work/"; }
        inside=${sid_work#"$sid"}
        runner=(bash scripts/sid_chroot run --cwd "$inside/run" -- env PYTHONDONTWRITEBYTECODE=1)
        site=$inside/site-$ver whl=$inside/$(basename "$wheel") py=${py#sid:} rundir=$inside/run
    else
        runner=(env -u PYTHONPATH)
        site=$work/site-$ver whl=$wheel rundir=$work/run
    fi
    "${runner[@]}" "$py" -m pip install -q --disable-pip-version-check --root-user-action=ignore \
        --no-deps --no-compile --target "$site" "$whl"
    # The test processes' children find the package through PYTHONPATH too.
    "${runner[@]}" PYTHONPATH="$site" sh -c 'cd "$0" && py=$1 site=$2 && shift 2 &&
        "$py" init_check.py "$site" && exec "$py" "$@"' "$rundir" "$py" "$site" -m pytest "${subset[@]}"
done

echo "check_dist: fresh venv from the sdist (compiles the extension)"
"$PYTHON" -m venv "$work/venv-sdist"
vs="$work/venv-sdist/bin/python"
"$vs" -m pip install -q --disable-pip-version-check "$sdist"
(
    cd "$work/run"
    unset PYTHONPATH
    "$work/venv-sdist/bin/pgjob" --version
    # The sdist's build made pgjob-helper too, and the init runs it.
    "$vs" init_check.py /venv-sdist/
    set +e
    "$work/venv-sdist/bin/pgjob" run -v -- "$vs" -c "import pgjob, sys; print('mechanism', pgjob.Job().mechanism); sys.exit(7)"
    status=$?
    set -e
    [ "$status" -eq 7 ] || { echo "pgjob run from the sdist install exited $status, expected 7"; exit 1; }
)
echo "check_dist: OK in $((SECONDS - start)) s"
