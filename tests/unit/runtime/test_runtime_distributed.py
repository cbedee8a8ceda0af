"""How a process that joined a process group ends (the rest of `runtime.distributed` runs for
real under torchrun in tests/e2e/test_distributed.py)."""

import dataclasses
import subprocess
import sys
import textwrap

import pytest

from unmask.runtime import distributed

ENDING = textwrap.dedent(
    """
    import atexit, sys
    from unmask.runtime import distributed
    atexit.register(lambda: print("finalized"))
    distributed._made_group = {made}
    print("summary line", end="")
    print("a warning", file=sys.stderr, end="")
    distributed.end_process_if_it_made_the_group(3)
    print(" and on")
    """
)


def ended(made: bool) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", ENDING.format(made=made)], capture_output=True, text=True, timeout=120)


def test_a_process_that_made_a_group_ends_with_its_code_its_output_flushed_and_no_shutdown():
    result = ended(made=True)
    assert result.returncode == 3
    # Piped, so block-buffered: without a flush the line would be lost with the process.
    assert result.stdout == "summary line"
    assert result.stderr.endswith("a warning")


def test_a_process_that_made_no_group_goes_on_and_shuts_down_as_usual():
    result = ended(made=False)
    assert result.returncode == 0
    assert result.stdout == "summary line and on\nfinalized\n"


def test_the_command_line_ends_a_process_that_joined_with_the_commands_exit_code(monkeypatch, capsys):
    from unmask.cli.main import COMMANDS, main

    ended = []
    monkeypatch.setattr(distributed, "end_process_if_it_made_the_group", ended.append)
    monkeypatch.setattr(distributed, "_made_group", True)
    assert main(["train", "--no-such-flag"]) == 2 and ended == [2], "the usage error's code"

    def broken(config):
        raise RuntimeError("a bug, or torch's")

    # An error that is not unmask's: its traceback, then the same ending, with 1.
    monkeypatch.setitem(COMMANDS, "train", dataclasses.replace(COMMANDS["train"], function=broken))
    ended.clear()
    main(["train", "--data", "d", "--out", "o", "--from-scratch", "tiny"])
    assert ended == [1] and "RuntimeError: a bug, or torch's" in capsys.readouterr().err

    # A process that made no group: nothing ends it, and such an error propagates as before.
    monkeypatch.setattr(distributed, "_made_group", False)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["train", "--data", "d", "--out", "o", "--from-scratch", "tiny"])
