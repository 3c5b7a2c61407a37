"""A handler module that imports in the CLI's own process but raises in
every worker process: the supervisor must give up on it (exit status 1)."""

import multiprocessing

from fastws.demo import EchoHandler

if multiprocessing.parent_process() is not None:
    raise RuntimeError("this module refuses to load in a worker")

handler = EchoHandler
