"""slimembed's benchmarks and the evaluation data they share with the tests."""
