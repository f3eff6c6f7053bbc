"""What the tests count to tell that nothing compiled: dynamo frames and DeepyTorch's precompiled artifacts."""
from torch._dynamo.utils import counters


def compiled_since(engine, before):
    """Compiles of any kind since `before` (a copy of engine.precompiled.STATS taken after counters.clear())."""
    stats = engine.precompiled.STATS
    return counters["stats"]["unique_graphs"] + stats["bakes"] - before["bakes"] + stats["loads"] - before["loads"]


def compiles_between(before, after):
    """Compiles of any kind between two answers of a test server's compile-count route (testpack.compile_counts)."""
    return sum(after[k] - before[k] for k in ("unique_graphs", "bakes", "loads"))
