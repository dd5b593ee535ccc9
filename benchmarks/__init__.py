"""busloop's hook-overhead benchmark suite (``python -m benchmarks`` or ``busloop bench``).

Three sections, each a function returning a JSON-ready dict:

* :func:`benchmarks.dispatch.run_dispatch` — µs per event with 0, 1, 10, 50 receivers:
  busloop's bus (plain and guarded emit), raw blinker ``send`` and a plain loop (the floor);
* :func:`benchmarks.overhead.run_overhead` — µs per training step on a tiny model: a plain
  loop, busloop bare and with its default callbacks, Lightning (all off / defaults), Ignite;
* :func:`benchmarks.scaling.run_scaling` — overhead with 0 to 100 callbacks on every
  per-batch event, and its slope.

:mod:`benchmarks.report` prints the tables and checks the targets; :mod:`benchmarks.__main__`
is the command line (``--quick``, ``--json``, ``--only``, ``--without`` ...). Peers that are
not installed (Lightning, Ignite) are skipped with a note. This is not a test suite: tests
never assert timings.
"""

__all__ = ["dispatch", "overhead", "report", "scaling", "stats"]
