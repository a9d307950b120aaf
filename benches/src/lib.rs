//! criterion benchmarks of reactive-lock live in `benches/`; see `BENCHMARKS.md`.
