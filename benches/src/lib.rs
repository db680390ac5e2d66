//! Benchmark support library.
