"""Every code block of README.md and docs/*.md that a user could copy runs as documented.

```python blocks run in a child interpreter (placeholders such as "worker" or "postgres"
become short Python sleepers; `other_popen_or_pid` a running process); ```sh lines that
are pgjob commands run as `python -m pgjob ...` with COMMAND made a Python no-op. A block
that can't run is marked right before it in the markdown, with a reason:

    <!-- doc-test: skip REASON -->
    <!-- doc-test: raises EXCEPTION on PLATFORM -->   (a pgjob exception, linux or win32)

Skipped blocks show up as skipped tests, each naming its reason.
"""
import os
import re
import shlex
import subprocess
import sys

import pytest

import pgjob

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The pgjob under test, wherever it was imported from.
SRC = os.path.dirname(os.path.dirname(os.path.abspath(pgjob.__file__)))
DOCS = ["README.md"] + sorted(os.path.join("docs", name)
                              for name in os.listdir(os.path.join(ROOT, "docs"))
                              if name.endswith(".md"))
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
MARKER = re.compile(r"<!--\s*doc-test:\s*(.*?)\s*-->\s*$")
PLATFORM = "win32" if sys.platform == "win32" else "linux" if sys.platform.startswith("linux") \
    else sys.platform

# Stands for the programs the docs name: runs briefly, takes any arguments.
PROGRAM = 'sys.executable, "-c", "import time; time.sleep(0.3)"'
PRELUDE = f'''\
import subprocess as _subprocess, sys as _sys
other_popen_or_pid = _subprocess.Popen([_sys.executable, "-c", "import time; time.sleep(60)"])
'''
EPILOGUE = '''
other_popen_or_pid.kill()
other_popen_or_pid.wait()
'''


def _blocks():
    found = []
    for doc in DOCS:
        with open(os.path.join(ROOT, doc), encoding="utf-8") as f:
            text = f.read()
        for m in BLOCK.finditer(text):
            lang, code = m.group(1), m.group(2)
            line = text.count("\n", 0, m.start()) + 1
            before = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1]
            marker = MARKER.search(before)
            found.append((doc, line, lang, code, marker.group(1) if marker else None))
    return found


BLOCKS = _blocks()
PYTHON = [b for b in BLOCKS if b[2] == "python"]


def _pgjob_lines(code):
    """The lines of a sh block that are pgjob commands, with their trailing comment."""
    lines = []
    for raw in code.splitlines():
        command, _, comment = raw.partition("#")
        words = shlex.split(command)
        if words[:1] == ["pgjob"] or words[:3] == ["python", "-m", "pgjob"]:
            lines.append((words, comment.strip()))
    return lines


SH = [b for b in BLOCKS if b[2] == "sh" and _pgjob_lines(b[3])]


def _expected_failure(marker):
    """(exception name, platform) for a `raises` marker, else None; skips a `skip` one."""
    if marker is None:
        return None
    if marker.startswith("skip"):
        reason = marker[4:].strip()
        assert reason, "a doc-test skip marker must say why"
        pytest.skip(f"marked in the markdown: {reason}")
    m = re.fullmatch(r"raises (\w+) on (\w+)", marker)
    assert m, f"unknown doc-test marker: {marker!r}"
    assert isinstance(getattr(pgjob, m.group(1), None), type), m.group(1)
    return m.group(1), m.group(2)


def _child_env():
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (SRC, env.get("PYTHONPATH")) if p)
    env.pop("PGJOB_DEBUG", None)
    return env


def _program(code):
    code = re.sub(r'\[\s*"(worker|postgres|server)"', f"[{PROGRAM}", code)
    code = re.sub(r'create_subprocess_exec\(\s*"(worker|postgres|server)"',
                  f"create_subprocess_exec({PROGRAM}", code)
    if "sys." in code and not re.search(r"^import .*\bsys\b", code, re.M):
        code = "import sys\n" + code
    return code


def test_the_docs_have_blocks_to_run():
    # Not vacuous: the README's first example and the API tour are among them.
    assert len([b for b in PYTHON if b[4] is None]) >= 3, PYTHON
    assert SH


@pytest.mark.parametrize("doc, line, lang, code, marker", PYTHON,
                         ids=[f"{b[0]}:{b[1]}" for b in PYTHON])
def test_python_block(doc, line, lang, code, marker, tmp_path):
    expected = _expected_failure(marker)
    program = _program(code)
    if "import sys" not in program:
        program = "import sys\n" + program
    body = PRELUDE + program + EPILOGUE
    if expected is not None and expected[1] == PLATFORM:
        body = (PRELUDE + "import pgjob as _pgjob\ntry:\n"
                + "".join(f"    {line}\n" for line in program.splitlines())
                + f"except _pgjob.{expected[0]}:\n    print('raised as documented')\n"
                + "else:\n    raise SystemExit('did not raise as documented')\n" + EPILOGUE)
    script = tmp_path / "doc_block.py"
    script.write_text(body, encoding="utf-8")
    done = subprocess.run([sys.executable, str(script)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=_child_env(), timeout=120,
                          cwd=str(tmp_path))
    assert done.returncode == 0, f"{doc}:{line}\n{body}\n{done.stderr.decode()}"


@pytest.mark.parametrize("doc, line, lang, code, marker", SH,
                         ids=[f"{b[0]}:{b[1]}" for b in SH])
def test_pgjob_command_block(doc, line, lang, code, marker, tmp_path):
    _expected_failure(marker)
    for words, comment in _pgjob_lines(code):
        args = words[1:] if words[0] == "pgjob" else words[3:]
        if "--" in args:
            # COMMAND becomes a Python that exits at once; its own arguments are kept.
            cut = args.index("--") + 1
            args = args[:cut] + [sys.executable, "-c", "pass"] + args[cut + 1:]
        done = subprocess.run([sys.executable, "-m", "pgjob", *args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=_child_env(), timeout=120,
                              cwd=str(tmp_path))
        # A line commented "# Windows" is Windows-only: elsewhere pgjob refuses it (125).
        want = 125 if comment == "Windows" and PLATFORM != "win32" else 0
        assert done.returncode == want, (f"{doc}:{line}: pgjob {' '.join(args)} -> "
                                         f"{done.returncode}\n{done.stderr.decode()}")
