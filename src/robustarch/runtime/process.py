"""How the command-line entry point ends a process that cannot be finalized safely."""

from __future__ import annotations

import contextlib
import logging
import os
import sys

log = logging.getLogger(__name__)

_FAST_EXIT_REASON: str | None = None


def request_fast_exit(reason: str) -> None:
    """Ask the command-line entry point to end this process with ``os._exit`` once its command has returned
    and its output is flushed, skipping interpreter finalization.

    Why: torch 2.13's ``DistributedDataParallel`` keeps its C++ reducer, and through it the gloo process
    group, alive after the wrapper is gone, so ``destroy_process_group`` cannot stop gloo's threads
    (``pt_gloo_runloop``, ``gloo_tcp_loop``). A process that then exits normally sometimes aborts during
    finalization ("terminate called without an active exception", SIGABRT), and torchrun reports the run as
    failed although every result was written. Library callers are unaffected: only :func:`exit_process`
    acts on the request."""
    global _FAST_EXIT_REASON
    _FAST_EXIT_REASON = reason


def exit_process(code: int) -> None:
    """End the process with ``code``: ``sys.exit`` normally, ``os._exit`` after flushing if
    :func:`request_fast_exit` was called (only entry points call this, never library code or tests)."""
    if _FAST_EXIT_REASON is None:
        sys.exit(code)
    log.debug("exiting without finalization: %s", _FAST_EXIT_REASON)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        # a closed or broken pipe must not turn success into a traceback
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)
