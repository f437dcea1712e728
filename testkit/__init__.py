"""What the tests and the benchmarks share: where the shared data is, baselines, counters and
generators of synthetic runs. The project's own packages never import it; tests and benchmarks
import it instead of each other."""
