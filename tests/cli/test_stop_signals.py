"""SIGINT and SIGTERM during any command: one line, exit 130 / 143, the handlers from before put back. An
error that the interrupt caused inside a library (a read cut short looks like a corrupt file) is reported as
the interrupt, not as a problem with the user's file."""

from __future__ import annotations

import os
import signal
import time

import pytest

import peftlab.interop
from peftlab.cli import main
from peftlab.core.errors import AdapterFileError


@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM], ids=lambda n: signal.Signals(n).name)
def test_an_interrupt_turned_into_an_error_by_a_library_is_reported_as_the_interrupt(tmp_path, capsys, monkeypatch,
                                                                                   number):
    def import_cut_short(source, destination, overwrite=False):
        try:
            os.kill(os.getpid(), number)
            time.sleep(5)
        except KeyboardInterrupt:  # what a C extension may do with an exception raised inside its call
            raise AdapterFileError(f"{source} is corrupt or truncated; save the adapter again") from None
        raise AssertionError("the signal did not interrupt the command")

    monkeypatch.setattr(peftlab.interop, "import_peft", import_cut_short)
    before = signal.getsignal(number)
    code = main(["import", str(tmp_path / "peft"), str(tmp_path / "out")])
    err = capsys.readouterr().err
    name = signal.Signals(number).name
    assert code == 128 + number, err
    assert err.strip() == f"peftlab import: stopped by {name}; nothing half-written was left (outputs are written " \
                          f"whole or not at all)", err
    assert signal.getsignal(number) == before


def test_a_user_error_without_a_signal_is_still_the_error(tmp_path, capsys):
    assert main(["import", str(tmp_path / "missing"), str(tmp_path / "out")]) == 2
    assert "peftlab import: error: " in capsys.readouterr().err
