"""The harness's cells as first-class Avocado tests.

QEMU's acceptance tests and Red Hat's virtualization qualification
(Avocado-VT, tp-qemu) run under Avocado, and many CI and release teams read
Avocado job results.  These plugins let them run a matrix with ``avocado run
matrix.yaml`` and get Avocado's own outputs (results.json, xunit, HTML,
``avocado jobs show``, ``avocado replay``), while every cell runs through the
same planning and the same entry point as ``mharness run``
(``harness.run.cellrun.run_logged``) -- there is no second copy of the cell
logic here, only translation:

- :mod:`.options`: the ``mharness.*`` settings and ``--mharness-tier`` /
  ``--mharness-seed`` / ``--mharness-qemu`` (Avocado init and CLI plugins);
- :mod:`.resolver`: a matrix file reference -> one runnable per cell id
  (``avocado.plugins.resolver``);
- :mod:`.cells`: the runnable <-> cell contract (kind, uri = cell id, tags,
  where the cell's tier comes from), and cells declared by Avocado variants
  (CIT, yaml_to_mux) made by the matrix's own expansion;
- :mod:`.runner`: the task that runs one cell (``avocado-runner-mharness-cell``,
  ``avocado.plugins.runnable.runner``);
- :mod:`.budget`: the cross-process share of cores and memory that keeps
  ``--max-parallel-tasks`` within ``mharness run -j``'s budget;
- :mod:`.report`: a cell's result as an Avocado status, output and whiteboard.

Everything here imports Avocado (the ``avocado`` extra); nothing else in the
harness imports this package.
"""
