"""Log lines of one event-loop turn are written together, in order, and none is lost: not
those of other threads, nor those pending when the loop is gone."""

from __future__ import annotations

import asyncio
import io
import threading

from appliance.log import TurnBatchedWriter


async def test_lines_of_a_turn_are_written_together_at_its_end_in_order():
    out = io.StringIO()
    writer = TurnBatchedWriter(out)
    for i in range(3):
        writer.msg(f"line {i}")
    assert out.getvalue() == ""  # still this turn
    await asyncio.sleep(0)
    assert out.getvalue() == "line 0\nline 1\nline 2\n"

    writer.msg("pending")
    thread = threading.Thread(target=writer.msg, args=("from a thread",))
    thread.start()
    thread.join()
    # a thread without a loop writes at once, after what the loop had pending
    assert out.getvalue().endswith("pending\nfrom a thread\n")
    await asyncio.sleep(0)
    assert out.getvalue().count("pending") == 1


def test_what_is_pending_when_the_loop_ends_is_written_by_flush():
    out = io.StringIO()
    writer = TurnBatchedWriter(out)

    async def log_and_stop() -> None:
        writer.msg("last words")

    loop = asyncio.new_event_loop()
    loop.run_until_complete(log_and_stop())
    loop.close()  # the turn's flush never ran
    writer.flush()  # what atexit does
    assert out.getvalue() == "last words\n"
