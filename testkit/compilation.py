"""How many graphs torch.compile has made: the benchmarks report it, the tests count recompilations."""

from __future__ import annotations


def compiled_graphs() -> int:
    """Graphs torch.compile has compiled in this process so far (dynamo's counter, which
    torch._dynamo.reset() does not reset): the benchmarks and tests count recompilations with it."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


