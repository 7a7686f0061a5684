"""SIGINT/SIGTERM: a real signal to this process, in and out of a cooperative phase."""

from __future__ import annotations

import os
import signal
import time

import pytest

from cutline.stopping import EXIT_INTERRUPTED, Interrupted, StopSignals


@pytest.fixture
def signals():
    stop = StopSignals()
    previous = stop.install()
    yield stop
    stop.restore(previous)


def _deliver(signum: int) -> None:
    """Send ``signum`` to this process and give the interpreter a moment to run the handler."""
    os.kill(os.getpid(), signum)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        time.sleep(0.01)  # the handler runs between bytecodes of the main thread


def test_outside_a_cooperative_phase_a_signal_interrupts_at_once(signals):
    with pytest.raises(Interrupted) as info:
        _deliver(signal.SIGTERM)
    assert info.value.exit_code == EXIT_INTERRUPTED == 130
    assert str(info.value) == "stopped by SIGTERM" and not info.value.forced
    assert signals.event.is_set()


def test_a_cooperative_phase_only_sets_the_event_and_a_second_signal_forces(signals, capsys):
    with signals.cooperating() as event:
        os.kill(os.getpid(), signal.SIGINT)
        assert event.wait(5)
        assert "received SIGINT, finishing current work..." in capsys.readouterr().err
        with pytest.raises(Interrupted) as info:
            _deliver(signal.SIGINT)
    assert info.value.forced


def test_an_interruptible_wait_inside_a_cooperative_phase_ends_at_once(signals):
    with signals.cooperating(), pytest.raises(Interrupted), signals.interruptible():
        _deliver(signal.SIGTERM)


def test_a_stop_asked_before_an_interruptible_wait_ends_it_before_it_waits(signals):
    with signals.cooperating():
        os.kill(os.getpid(), signal.SIGTERM)  # only sets the event here
        assert signals.event.wait(5)
        with pytest.raises(Interrupted), signals.interruptible():
            raise AssertionError("not reached")


def test_install_and_restore_put_the_previous_handlers_back():
    before = signal.getsignal(signal.SIGTERM)
    stop = StopSignals()
    previous = stop.install()
    assert signal.getsignal(signal.SIGTERM) == stop._handle
    stop.restore(previous)
    assert signal.getsignal(signal.SIGTERM) == before
