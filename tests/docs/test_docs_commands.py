"""Every command in the user documentation is run by a test.

Convention (stated for readers in docs/guide/README.md):
- Commands live in fenced blocks with the info string ``console``. A line starting with ``$ `` is
  a command; the lines after it, up to the next ``$ ``, are sample output (not compared). A
  command ending in ``\\`` continues on the next line; one ending in ``<<EOF`` (any word, quoted
  or not) takes the lines up to that word as its input. ``sh``/``bash``/``shell`` blocks are
  refused (they would hide commands from this test).
- HTML comments on the lines right before a block annotate it:
  ``<!-- notest: REASON -->`` the block is not run (counted; see ``NOTEST_ALLOWED``);
  ``<!-- doctest: exit=N contains="TEXT" match="REGEX" retry=SECONDS in=outside -->``: the
  block's last command must exit N (default 0) and print TEXT (stdout or stderr); ``match``: its
  stdout must match the Python regular expression (``re.search``, ``.`` matches newlines too;
  e.g. that a table has exactly one given row); with ``retry`` the whole block is run again until
  that holds or SECONDS pass (convergence); ``in=outside`` (bare-metal chapter) runs it on the
  machine outside the host instead of on the host. Commands before the last must exit 0.
- Each file names where its commands run with ``<!-- doctest-env: ENV -->``:
  ``shell`` (the repository directory, nothing else), ``lab`` (a fresh lab that the file itself
  brings up and down: ``$TABBY_LAB_NAME`` gives it a unique name), ``lab-up`` (a fresh lab already
  up: 3 nodes, 2 workloads each), ``host`` (a FelixBed: the commands run inside a node namespace,
  which is "the host" node1 with eth0 198.51.100.1/24 and etcd at 127.0.0.1:2379, running
  tabby-felix, with TCP listeners on 22, 80 and 8080; ``in=outside`` runs in the namespace at
  198.51.100.2 that plays another machine on the LAN); ``reflector`` (deploy/ROUTE-REFLECTOR.md
  only, which is not part of this test: tests/lab/test_rr_howto.py runs it on a dedicated
  reflector host in a lab).
Blocks run in file order, every command in its own ``bash -c`` from the repository directory,
with ``.venv/bin`` first in ``PATH``; in lab files the default lab's state path
``/run/tabby-lab/tabby/`` is replaced by the test lab's.

What is not run (``NOTEST_ALLOWED``, per file): installing the machine (``bootstrap.sh``
installs apt packages and runs the whole suite), systemd units (no systemd in the test
machine), IP-in-IP labs (this kernel has no ``ipip``; tests/vm covers it).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.lab.labdriver import Lab
from tests.support.felix import FelixBed

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
DOCS = [*sorted((REPO / "docs" / "guide").glob("*.md")), REPO / "README.md"]
ENVS = ("shell", "lab", "lab-up", "host", "reflector")

# File name -> how many blocks may be marked notest there, and the total cap.
NOTEST_ALLOWED = {
    "README.md": 3,  # bootstrap.sh lab / test (install the machine); tabbyctl against any etcd
    "bare-metal.md": 2,  # installing and starting the systemd units
    "ipip-mtu.md": 2,  # IP-in-IP needs a kernel with ipip (tests/vm)
}
NOTEST_MAX = 7
COMMAND_TIMEOUT = 180.0

_HEREDOC = re.compile(r"<<-?\s*(['\"]?)([A-Za-z_][A-Za-z0-9_]*)\1\s*$")
_COMMENT = re.compile(r"^\s*<!--\s*(doctest|notest|doctest-env)\s*:\s*(.*?)\s*-->\s*$")


class DocFormatError(ValueError):
    """A documentation file breaks the convention (names file and line)."""


@dataclass(frozen=True, slots=True)
class Command:
    text: str
    line: int


@dataclass(frozen=True, slots=True)
class Block:
    path: Path
    line: int
    commands: tuple[Command, ...]
    exit: int = 0
    contains: str | None = None
    match: str | None = None
    retry: float = 0.0
    where: str = "host"
    notest: str | None = None

    @property
    def where_text(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


@dataclass
class Doc:
    path: Path
    env: str | None = None
    blocks: list[Block] = field(default_factory=list)

    @property
    def runnable(self) -> list[Block]:
        return [b for b in self.blocks if b.notest is None]

    @property
    def skipped(self) -> list[Block]:
        return [b for b in self.blocks if b.notest is not None]


def _commands(lines: list[tuple[int, str]], where: str) -> tuple[Command, ...]:
    out: list[Command] = []
    i = 0
    while i < len(lines):
        n, text = lines[i]
        i += 1
        if not text.startswith("$ "):
            continue
        parts = [text[2:]]
        while parts[-1].endswith("\\") and i < len(lines):
            parts.append(lines[i][1])
            i += 1
        m = _HEREDOC.search(parts[-1])
        if m:
            word = m.group(2)
            while i < len(lines) and lines[i][1] != word:
                parts.append(lines[i][1])
                i += 1
            if i == len(lines):
                raise DocFormatError(f"{where}:{n}: heredoc <<{word} never ends")
            parts.append(word)
            i += 1
        out.append(Command("\n".join(parts), n))
    return tuple(out)


def parse_doc(path: Path) -> Doc:
    doc = Doc(path)
    lines = path.read_text().splitlines()
    rel = path.relative_to(REPO)
    pending: list[tuple[str, str]] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        m = _COMMENT.match(line)
        if m:
            if m.group(1) == "doctest-env":
                if m.group(2) not in ENVS:
                    raise DocFormatError(f"{rel}:{i + 1}: doctest-env must be one of {ENVS}")
                doc.env = m.group(2)
            else:
                pending.append((m.group(1), m.group(2)))
            i += 1
            continue
        if not line.lstrip().startswith("```"):
            if line.strip():
                pending = []
            i += 1
            continue
        indent = len(line) - len(line.lstrip())  # a fence inside a list item
        info = line.strip()[3:].strip()
        start = i + 1
        body: list[tuple[int, str]] = []
        i += 1
        while i < len(lines) and not lines[i].lstrip().startswith("```"):
            text = lines[i]
            cut = len(text[:indent]) - len(text[:indent].lstrip())
            body.append((i + 1, text[cut:]))
            i += 1
        i += 1
        if info in ("sh", "bash", "shell", "shell-session"):
            raise DocFormatError(f"{rel}:{start}: use ```console with '$ ' lines, not ```{info}")
        if info != "console":
            pending = []
            continue
        commands = _commands(body, str(rel))
        if not commands:
            raise DocFormatError(f"{rel}:{start}: console block without a '$ ' command")
        opts: dict[str, str] = {}
        notest: str | None = None
        for kind, text in pending:
            if kind == "notest":
                notest = text
                if not notest:
                    raise DocFormatError(f"{rel}:{start}: notest needs a reason")
            else:
                for item in shlex.split(text):
                    key, _, value = item.partition("=")
                    if key not in ("exit", "contains", "match", "retry", "in"):
                        raise DocFormatError(f"{rel}:{start}: unknown doctest option {key!r}")
                    if key == "match":
                        try:
                            re.compile(value)
                        except re.error as exc:
                            raise DocFormatError(f"{rel}:{start}: match: {exc}") from None
                    opts[key] = value
        pending = []
        doc.blocks.append(
            Block(
                path,
                start,
                commands,
                exit=int(opts.get("exit", "0")),
                contains=opts.get("contains"),
                match=opts.get("match"),
                retry=float(opts.get("retry", "0")),
                where=opts.get("in", "host"),
                notest=notest,
            )
        )
    if doc.blocks and doc.env is None and doc.runnable:
        raise DocFormatError(f"{rel}: has commands but no <!-- doctest-env: ... --> line")
    return doc


# ------------------------------------------------------------------------------ no root needed


def test_parser_reads_heredocs_continuations_and_annotations(tmp_path: Path) -> None:
    path = REPO / "docs" / "guide" / "_parser_probe.md"
    text = (
        "<!-- doctest-env: shell -->\n"
        '<!-- doctest: exit=1 contains="x y" match="^a\\n[0-9]" retry=5 -->\n'
        "```console\n$ cat <<'EOF'\n$ not a command\nEOF\nout\n$ echo a \\\n  b\nab\n```\n"
        "<!-- notest: because -->\n```console\n$ rm -rf /nothing\n```\n"
        "```yaml\n$ not run\n```\n"
    )
    path.write_text(text)
    try:
        doc = parse_doc(path)
    finally:
        path.unlink()
    assert doc.env == "shell"
    first, second = doc.blocks
    assert [c.text for c in first.commands] == [
        "cat <<'EOF'\n$ not a command\nEOF",
        "echo a \\\n  b",
    ]
    assert (first.exit, first.contains, first.retry, first.notest) == (1, "x y", 5.0, None)
    assert first.match == "^a\\n[0-9]" and re.search(first.match, "a\n1")
    assert second.notest == "because"


def test_docs_follow_the_convention_and_notest_stays_small() -> None:
    docs = [parse_doc(p) for p in DOCS]
    total = 0
    for doc in docs:
        n = len(doc.skipped)
        total += n
        allowed = NOTEST_ALLOWED.get(doc.path.name, 0)
        reasons = [f"{b.where_text}: {b.notest}" for b in doc.skipped]
        assert n <= allowed, f"{doc.path.name}: {n} notest blocks (allowed {allowed}): {reasons}"
    assert total <= NOTEST_MAX
    assert sum(len(d.runnable) for d in docs) >= 20, "the docs lost their commands?"
    for doc in docs:
        assert doc.env != "reflector", f"{doc.path.name}: env reflector is deploy/ only"
        for b in doc.runnable:
            assert b.where in ("host", "outside"), b.where_text
            assert b.where == "host" or doc.env == "host", f"{b.where_text}: in= needs env host"


# ------------------------------------------------------------------------------ running


@dataclass
class Runner:
    env: dict[str, str]
    netns: dict[str, str] = field(default_factory=dict)  # where -> namespace
    cwd: Path = REPO
    log: list[str] = field(default_factory=list)

    def run(self, cmd: Command, where: str) -> subprocess.CompletedProcess[str]:
        text = cmd.text
        lab = self.env.get("TABBY_LAB_NAME")
        if lab:  # the docs' default lab name in paths -> this test's lab
            text = text.replace("/run/tabby-lab/tabby/", f"/run/tabby-lab/{lab}/")
        argv = ["bash", "-c", text]
        if where in self.netns:
            argv = ["ip", "netns", "exec", self.netns[where], *argv]
        t0 = time.monotonic()
        res = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            cwd=self.cwd,
            env=self.env,
            timeout=COMMAND_TIMEOUT,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        self.log.append(
            f"[{time.monotonic() - t0:5.1f}s exit {res.returncode}] {cmd.text.splitlines()[0]}"
        )
        return res

    def run_block(self, block: Block) -> None:
        deadline = time.monotonic() + block.retry
        while True:
            problem = self._attempt(block)
            if problem is None:
                return
            if time.monotonic() >= deadline:
                raise AssertionError(f"{block.where_text}: {problem}\nrun so far:\n" + self.trail())
            time.sleep(1.0)

    def _attempt(self, block: Block) -> str | None:
        *first, last = block.commands
        for cmd in first:
            res = self.run(cmd, block.where)
            if res.returncode != 0:
                return _explain(cmd, res, "exit 0")
        res = self.run(last, block.where)
        if res.returncode != block.exit:
            return _explain(last, res, f"exit {block.exit}")
        if block.contains is not None and block.contains not in res.stdout + res.stderr:
            return _explain(last, res, f"output containing {block.contains!r}")
        if block.match is not None and not re.search(block.match, res.stdout, re.DOTALL):
            return _explain(last, res, f"stdout matching {block.match!r}")
        return None

    def trail(self) -> str:
        return "\n".join(self.log[-40:])


def _explain(cmd: Command, res: subprocess.CompletedProcess[str], wanted: str) -> str:
    return (
        f"line {cmd.line}: `{cmd.text}` exited {res.returncode}, wanted {wanted}\n"
        f"stdout:\n{res.stdout[-3000:]}\nstderr:\n{res.stderr[-3000:]}"
    )


def _base_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
    for var in ("TABBY_LAB_NAME", "TABBY_LAB_STATE_ROOT", "ETCD_ENDPOINTS", "NODENAME"):
        env.pop(var, None)
    return env


def _docs_with_commands() -> Iterator[pytest.ParameterSet]:
    for path in DOCS:
        doc = parse_doc(path)
        if doc.runnable:
            yield pytest.param(path, id=str(path.relative_to(REPO)))


@pytest.mark.parametrize("path", list(_docs_with_commands()))
def test_doc_commands_run(path: Path, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    doc = parse_doc(path)
    runner = Runner(_base_env())
    if doc.env in ("lab", "lab-up"):
        make_lab = request.getfixturevalue("make_lab")
        lab: Lab = make_lab("doc")
        lab.up_done = True  # teardown runs `tabby-lab down` whatever the doc did
        runner.env["TABBY_LAB_NAME"] = lab.name
        runner.env["TABBY_LAB_STATE_ROOT"] = str(lab.state_root)
        if doc.env == "lab-up":
            lab.up(3, 2)
    elif doc.env == "host":
        bed: FelixBed = request.getfixturevalue("felix_bed")
        bed.serve(bed.node, (22, 80, 8080))
        bed.start_felix(tmp_path)
        bed.wait_ready()
        runner.netns = {"host": bed.node, "outside": bed.outside}
    for block in doc.runnable:
        runner.run_block(block)
    print(f"{path.relative_to(REPO)}: {len(doc.runnable)} blocks run\n{runner.trail()}")
