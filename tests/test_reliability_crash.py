"""Crash and concurrency safety of `new` and `remove` (scaffold.journal, scaffold.lock).

A run is killed with a real SIGKILL just before its Nth file-system step (PEFT_SCAFFOLD_FAULT_AT=N); then the next
`new` must leave exactly the tree a clean run leaves, and the next `remove` exactly the pristine tree, byte for byte
(modes included, no temporary or backup file). The runs are forked from the test process (the CLI's code is
already imported there, and the PEFT texts every run parses are parsed there once, so a run costs its own work,
not an interpreter start nor libcst's parsing); one test goes through the real entry point in a fresh interpreter.
"""

from __future__ import annotations

import ast
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

import scaffold.cli
import scaffold.core.generate
import scaffold.kinds.tuner
import scaffold.pipeline
import scaffold.register.transforms
import scaffold.render.format  # noqa: F401  # imported before forking: children run warm, and as the parent
from scaffold import journal
from scaffold.peft_source import copy_peft_tree
from tests.conftest import memoized_cst_parse, snapshot_tree


REPO = Path(__file__).resolve().parent.parent
SPEC = REPO / "reference_methods" / "lora.yaml"  # reflora
OTHER_SPEC = REPO / "tests" / "specs" / "hadamard.yaml"  # hadalow


def fork_cli(args: list[str], env: dict[str, str] | None = None, log: Path | None = None) -> tuple[int, str]:
    """Run the CLI in a forked child; return (exit status, or -signal when killed by one; its stderr)."""
    err_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"peft-scaffold-test-{os.getpid()}.err"
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        try:
            fd = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.dup2(fd, 2)
            # pytest's capture replaced the streams: write to the real descriptors instead
            sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
            sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
            os.environ.update(env or {})
            if log is not None:
                os.environ["PEFT_SCAFFOLD_FAULT_LOG"] = str(log)
            journal._steps = 0
            sys.argv = ["peft-scaffold", *args]
            from scaffold.cli import main

            try:
                main()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        finally:
            os._exit(99)
    _, status = os.waitpid(pid, 0)
    stderr = err_path.read_text(errors="replace")
    err_path.unlink()
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status), stderr
    return os.WEXITSTATUS(status), stderr


def new_args(tree: Path, spec: Path = SPEC) -> list[str]:
    return ["new", str(spec), "--peft-root", str(tree)]


def remove_args(tree: Path, name: str = "reflora") -> list[str]:
    return ["remove", name, "--peft-root", str(tree)]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Where the kill loops keep their trees: a RAM-backed directory (/dev/shm) when there is one. A SIGKILL leaves
    the tree as the kernel's page cache has it on any file system (an fsync matters only for a power cut, which
    these tests do not simulate), and on a disk the journal's fsyncs took most of the loops' time (measured: 4
    killed `remove` runs and their follow-ups, 28 s on /tmp, 5-11 s on /dev/shm)."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 1 << 30:
        path = Path(tempfile.mkdtemp(prefix="peft-scaffold-crash-", dir=shm))
        yield path
        shutil.rmtree(path, ignore_errors=True)
    else:
        yield tmp_path_factory.mktemp("scratch")


@pytest.fixture(scope="module", autouse=True)
def parsed_once(peft_sdist: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A clean `new` and `remove` in this process, on a tree of its own, with `memoized_cst_parse`: every run forked
    afterwards starts with the texts it reads already parsed (the pristine and the generated registry files)."""
    with memoized_cst_parse() as parse:
        tree = copy_peft_tree(peft_sdist, tmp_path_factory.mktemp("parsed-once") / "peft")
        for args in (new_args(tree), remove_args(tree)):
            result = CliRunner().invoke(scaffold.cli.app, args)
            assert result.exit_code == 0, result.output
        assert parse.cache_info().currsize > 0
        yield


@pytest.fixture(scope="module")
def states(peft_sdist: Path, scratch: Path, parsed_once: None) -> dict[str, object]:
    """The pristine tree, the tree after a clean `new`, and how many steps each command takes (the same for every
    fresh copy of the sdist: the tests compare their own `peft_tree` copies with these snapshots)."""
    tmp_path = scratch / "states"
    tmp_path.mkdir()
    tree = copy_peft_tree(peft_sdist, tmp_path / "peft")
    pristine = snapshot_tree(tree)
    log = tmp_path / "steps-new.log"
    assert fork_cli(new_args(tree), log=log)[0] == 0
    generated = snapshot_tree(tree)
    generated_copy = tmp_path / "generated"
    shutil.copytree(tree, generated_copy, symlinks=True)
    new_steps = len(log.read_text().splitlines())
    log = tmp_path / "steps-remove.log"
    assert fork_cli(remove_args(tree), log=log)[0] == 0
    assert snapshot_tree(tree) == pristine
    remove_steps = len(log.read_text().splitlines())
    assert snapshot_tree(generated_copy) == generated
    return {
        "pristine": pristine,
        "generated": generated,
        "generated_copy": generated_copy,  # a tree after a clean `new`, to copy before killing `remove`
        "new_steps": new_steps,
        "remove_steps": remove_steps,
    }


def check_kill_during_new(base: Path, work: Path, n: int, states: dict[str, object], *, both: bool = True) -> None:
    """Kill `new` at step `n`; then `new` gives the clean-run tree, and (`both`) `remove` then the pristine one."""
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(base, work, symlinks=True)
    status, stderr = fork_cli(new_args(work), env={"PEFT_SCAFFOLD_FAULT_AT": str(n)})
    assert status == -signal.SIGKILL, f"step {n}: not killed ({status}: {stderr})"
    status, stderr = fork_cli(new_args(work))
    assert status == 0, f"step {n}: {stderr}"
    assert snapshot_tree(work) == states["generated"], f"new after a kill at step {n}"
    if not both:
        return
    status, stderr = fork_cli(remove_args(work))
    assert status == 0, f"step {n}: {stderr}"
    assert snapshot_tree(work) == states["pristine"], f"remove after a kill at step {n} of new"


def check_kill_during_remove(work: Path, n: int, states: dict[str, object], *, both: bool = True) -> None:
    """Kill `remove` at step `n`; then `remove` gives the pristine tree, and (`both`) `new` then the clean-run one."""
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(states["generated_copy"], work, symlinks=True)  # type: ignore[arg-type]
    status, stderr = fork_cli(remove_args(work), env={"PEFT_SCAFFOLD_FAULT_AT": str(n)})
    assert status == -signal.SIGKILL, f"step {n}: not killed ({status}: {stderr})"
    status, stderr = fork_cli(remove_args(work))
    # Killed past its commit point, the removal is finished by recovery and there is nothing left to remove.
    assert status == 0 or (status == 2 and "was not generated by peft-scaffold" in stderr), stderr
    assert snapshot_tree(work) == states["pristine"], f"remove after a kill at step {n} of remove"
    if not both:
        return
    status, stderr = fork_cli(new_args(work))
    assert status == 0, f"step {n}: {stderr}"
    assert snapshot_tree(work) == states["generated"], f"new after a kill at step {n} of remove"


def test_kill_at_sampled_steps_of_new_and_remove(peft_tree: Path, scratch: Path, states: dict[str, object]) -> None:
    """A few steps of each: after the journal is written (rolled back), in the middle of the renames (rolled back),
    in the clean-up after the commit point (finished). Every step: the slow test below."""
    new_steps, remove_steps = states["new_steps"], states["remove_steps"]
    assert new_steps >= 30 and remove_steps >= 20  # type: ignore[operator]  # journal, temps, renames, clean-up
    for n in (3, (2 * new_steps) // 3, new_steps - 1):  # type: ignore[operator]
        check_kill_during_new(peft_tree, scratch / "work", n, states)
    for n in ((2 * remove_steps) // 3, remove_steps - 1):  # type: ignore[operator]
        check_kill_during_remove(scratch / "work", n, states)


@pytest.mark.slow
def test_kill_at_every_step_of_new_and_remove(peft_tree: Path, scratch: Path, states: dict[str, object]) -> None:
    # The follow-up in the other direction is checked at the sampled steps above; here one run after each kill.
    for n in range(1, states["new_steps"] + 1):  # type: ignore[operator]
        check_kill_during_new(peft_tree, scratch / "work", n, states, both=False)
    for n in range(1, states["remove_steps"] + 1):  # type: ignore[operator]
        check_kill_during_remove(scratch / "work", n, states, both=False)


def test_kill_during_recovery_then_recover_again(peft_tree: Path, tmp_path: Path, states: dict[str, object]) -> None:
    """A recovery killed half-way is itself recovered by the next run."""
    n = (2 * states["new_steps"]) // 3  # type: ignore[operator]  # in the middle of the renames
    status, _ = fork_cli(new_args(peft_tree), env={"PEFT_SCAFFOLD_FAULT_AT": str(n)})
    assert status == -signal.SIGKILL
    assert (peft_tree / journal.JOURNAL_NAME).exists()
    status, _ = fork_cli(new_args(peft_tree), env={"PEFT_SCAFFOLD_FAULT_AT": "4"})  # 4th step of the rollback
    assert status == -signal.SIGKILL
    assert fork_cli(remove_args(peft_tree))[1].startswith("recovered")  # rolled back: nothing to remove
    assert snapshot_tree(peft_tree) == states["pristine"]


def test_sigint_rolls_back_at_once(peft_tree: Path, states: dict[str, object]) -> None:
    """Ctrl-C (a real SIGINT) before the commit point: exit 130, the tree as it was, no journal left."""
    total = states["new_steps"]
    for n in (3, total // 2, total - 11):  # type: ignore[operator]
        env = {"PEFT_SCAFFOLD_FAULT_AT": str(n), "PEFT_SCAFFOLD_FAULT_SIGNAL": "INT"}
        status, stderr = fork_cli(new_args(peft_tree), env=env)
        assert status == 130 and "interrupted" in stderr, (n, status, stderr)
        assert snapshot_tree(peft_tree) == states["pristine"], f"SIGINT at step {n}"
    # Past the commit point, the clean-up is finished before the interrupt is delivered.
    env = {"PEFT_SCAFFOLD_FAULT_AT": str(total - 2), "PEFT_SCAFFOLD_FAULT_SIGNAL": "INT"}
    assert fork_cli(new_args(peft_tree), env=env)[0] == 130
    assert snapshot_tree(peft_tree) == states["generated"]


def test_keyboard_interrupt_in_process_rolls_back(peft_tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from scaffold.pipeline import generate_into_tree

    before = snapshot_tree(peft_tree)
    calls = [0]
    original = journal._replace

    def interrupted(src: Path, dst: Path) -> None:
        calls[0] += 1
        if calls[0] == 5:
            raise KeyboardInterrupt
        original(src, dst)

    monkeypatch.setattr(journal, "_replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        generate_into_tree(SPEC, peft_tree).changeset.apply()
    assert calls[0] == 5
    assert snapshot_tree(peft_tree) == before


def test_real_entry_point_killed_then_recovered(peft_tree: Path, states: dict[str, object]) -> None:
    """The same through `python -m scaffold.cli` in a fresh interpreter: killed, then `new` recovers and says so."""
    env = {**os.environ, "PEFT_SCAFFOLD_FAULT_AT": str(states["new_steps"] // 2)}
    killed = subprocess.run([sys.executable, "-m", "scaffold.cli", *new_args(peft_tree)], env=env, capture_output=True)
    assert killed.returncode == -signal.SIGKILL
    leftovers = journal.leftover_files(peft_tree)
    assert leftovers and all(p.endswith((journal.TMP_SUFFIX, journal.BAK_SUFFIX)) for p in leftovers)

    doctor = subprocess.run(
        [sys.executable, "-m", "scaffold.cli", "doctor", "--peft-root", str(peft_tree)], capture_output=True, text=True
    )
    assert doctor.returncode == 1
    assert "interrupted" in doctor.stdout and journal.TMP_SUFFIX in doctor.stdout

    env.pop("PEFT_SCAFFOLD_FAULT_AT")
    again = subprocess.run(
        [sys.executable, "-m", "scaffold.cli", *new_args(peft_tree)], env=env, capture_output=True, text=True
    )
    assert again.returncode == 0, again.stderr
    assert again.stderr.startswith("recovered") and "rolled back" in again.stderr
    assert snapshot_tree(peft_tree) == states["generated"]


# -- the lock ----------------------------------------------------------------------------------------------------


def test_a_held_lock_stops_a_second_run_at_once(peft_tree: Path) -> None:
    import fcntl

    before = snapshot_tree(peft_tree)
    fd = os.open(peft_tree, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        for args in (new_args(peft_tree), remove_args(peft_tree), [*new_args(peft_tree), "--dry-run"]):
            started = time.monotonic()
            status, stderr = fork_cli(args)
            assert status == 1
            assert time.monotonic() - started < 10
            assert len(stderr.strip().splitlines()) == 1 and "holds the lock" in stderr, stderr
    finally:
        os.close(fd)
    assert snapshot_tree(peft_tree) == before


def test_a_lock_held_by_a_dead_process_is_free(peft_tree: Path, states: dict[str, object]) -> None:
    import fcntl

    pid = os.fork()
    if pid == 0:
        fd = os.open(peft_tree, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.kill(os.getpid(), signal.SIGKILL)
    os.waitpid(pid, 0)
    assert fork_cli(new_args(peft_tree))[0] == 0
    assert snapshot_tree(peft_tree) == states["generated"]


def test_two_concurrent_runs_never_lose_an_edit(peft_tree: Path, tmp_path: Path) -> None:
    """Two `new` runs of different methods started together on one tree, a few times over: never both exit 0 with
    an edit lost; the loser (if any) says the tree is locked and changed nothing; the registry stays valid Python."""
    base = tmp_path / "base"
    shutil.copytree(peft_tree, base)
    cli = [sys.executable, "-m", "scaffold.cli"]
    both_succeeded = 0
    for attempt in range(3):
        work = tmp_path / f"race-{attempt}"
        shutil.copytree(base, work)
        procs = [
            subprocess.Popen(
                [*cli, *new_args(work, spec)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
            )
            for spec in (SPEC, OTHER_SPEC)
        ]
        results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]  # type: ignore[union-attr]
        types = (work / "src/peft/utils/peft_types.py").read_text()
        for (status, stderr), member in zip(results, ("REFLORA", "HADALOW"), strict=True):
            if status == 0:
                assert f'{member} = "{member}"' in types
            else:
                assert status == 1 and "holds the lock" in stderr, stderr
                assert f'{member} = "{member}"' not in types
        assert any(status == 0 for status, _ in results)
        both_succeeded += all(status == 0 for status, _ in results)
        for rel in ("src/peft/__init__.py", "src/peft/tuners/__init__.py", "src/peft/utils/peft_types.py",
                    "src/peft/utils/constants.py", "src/peft/utils/other.py", "tests/test_config.py",
                    "tests/test_custom_models.py"):  # fmt: skip
            ast.parse((work / rel).read_text(), rel)
        assert journal.leftover_files(work) == []
    # Both may succeed when one finished before the other took the lock: then both edits are there (checked above).
    assert both_succeeded <= 3
