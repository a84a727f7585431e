"""The one wrapper for external tools: a tool that asks on its terminal gets its answers there, in turn,
and one that asks more than it is given, or never ends, is stopped at its deadline with a specific error."""

import time

import pytest

from appliance import command

pytestmark = pytest.mark.unit
ASKS_TWICE = "printf 'Name: ' > /dev/tty; read a < /dev/tty; printf 'Again: ' > /dev/tty; read b < /dev/tty; echo $a-$b"


def test_each_answer_is_typed_on_the_tools_terminal_when_it_asks():
    assert command.answered(["sh", "-c", ASKS_TWICE], ["one", "two"], timeout=10) == "one-two\n"


def test_a_tool_that_asks_more_than_it_is_given_stops_at_its_deadline():
    started = time.monotonic()
    with pytest.raises(command.CommandError, match="did not finish in 1 s"):
        command.answered(["sh", "-c", ASKS_TWICE], ["one"], timeout=1)
    assert time.monotonic() - started < 5


def test_a_failing_tool_says_what_it_said():
    with pytest.raises(command.CommandError, match=r"sh failed \(exit 3\): no such thing"):
        command.answered(["sh", "-c", "echo no such thing >&2; exit 3"], [], timeout=10)

