"""Sphinx extension (and importable helper): no more whole-timeout stalls after ipywidgets cells.

The symptom: executing a notebook with nbclient, a cell that displays ipywidgets sometimes takes exactly
the cell timeout (300 s in the book's build) and then completes normally, with no error (nbclient issue
312). Measured here (nbclient 0.11, jupyter_client 8.10, pyzmq 27.3, ipykernel 7.4, ipywidgets 8.1): a
notebook with six explore_live cells took 60.0 s in one widget cell, with a 60 s timeout, in 1 run of 4;
0.2-0.9 s per widget cell otherwise. No error, no lost output: the kernel's reply had arrived in time.

Why: nbclient waits for a cell's ``execute_reply`` with one ``await shell_channel.get_msg(timeout=<cell
timeout>)``, which is one ``zmq.asyncio`` poll of the shell socket. That the call returns the reply exactly
at the timeout means the poll was not woken when the reply arrived and found it only in its final check.
ZeroMQ signals readiness through an edge-triggered file descriptor shared by all events of a socket; the
burst of IOPub messages of a widget cell (a comm_open for every control, layout and style model) is when
the wake-up goes missing (the likely mechanism, as in nbclient issue 312; not traced further here).

The fix: `apply` makes jupyter_client's asynchronous ``get_msg`` poll in slices of at most
`SLICE_SECONDS`; each slice ends with a fresh readiness check, so a missed wake-up costs at most one slice
and the overall timeout is unchanged (Empty is still raised when it passes without a message). It is
applied when Sphinx loads this extension (the book build executes chapters in the same process, through
myst-nb and nbclient), and the book's own notebook runners call `apply()` before executing.
"""

from __future__ import annotations

import time

SLICE_SECONDS = 0.5
_APPLIED = False


def apply() -> bool:
    """Patch ``jupyter_client``'s async channel ``get_msg`` (idempotent); return False when it is absent."""
    global _APPLIED
    if _APPLIED:
        return True
    import inspect
    from queue import Empty

    try:  # jupyter_client 8
        from jupyter_client.channels import AsyncZMQSocketChannel
    except ImportError:
        try:  # jupyter_client 7 (Colab's 7.4.9): the one channel class is the asynchronous one
            from jupyter_client.channels import ZMQSocketChannel as AsyncZMQSocketChannel
        except ImportError:
            return False
    if not inspect.iscoroutinefunction(AsyncZMQSocketChannel.get_msg):
        return False

    async def get_msg(self, timeout: float | None = None):
        """Gets a message if there is one that is ready (polling in short slices, see module docstring)."""
        assert self.socket is not None
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = SLICE_SECONDS if deadline is None else max(0.0, deadline - time.monotonic())
            if await self.socket.poll(int(1000 * min(SLICE_SECONDS, left))):
                return await self._recv()
            if deadline is not None and time.monotonic() >= deadline:
                raise Empty

    get_msg.__wrapped__ = AsyncZMQSocketChannel.get_msg
    AsyncZMQSocketChannel.get_msg = get_msg
    _APPLIED = True
    return True


def setup(app):
    apply()
    return {"parallel_read_safe": True, "parallel_write_safe": True}
