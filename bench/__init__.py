"""Side-by-side benchmarks of imagepipe and their anchors: `make bench` writes BENCHMARKS.md."""
