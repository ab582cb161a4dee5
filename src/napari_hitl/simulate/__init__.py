"""A simulated annotator for benchmarks and tests: click and scribble robots, costs."""
