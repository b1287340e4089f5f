"""What the tests share besides fixtures (fixtures live in the conftest.py files; test modules
never import each other): ``waiting`` (wait for a state), ``servers`` (free ports, a private
redis-server, a fresh PostgreSQL schema), ``processes`` (real ``polyfit`` and worker processes,
the environment they get, finding processes in /proc), ``database`` (rows read with plain SQL,
rows and results to write, racing writers), ``sweeps`` (the shared grid, sweeps recorded and
trained in this process, the scheduler run in this process), ``numerics`` (specs and limits for
the pure tests of ``polyfit_models``), and the harnesses of the end-to-end tests: ``hosts`` and
``impair`` (a fleet's hosts as network namespaces), ``fleet``, ``hostile`` (hand-made queue
messages), ``clockshift`` (a process's clock moved) and ``plugins`` (plugin packages made on the
fly). This module imports nothing heavy: ``python -m tests.support.impair`` runs inside a
network namespace."""

from pathlib import Path

#: The repository's root: the working tree every started process imports polyfit from.
ROOT = Path(__file__).resolve().parents[2]
