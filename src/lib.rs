//! The `cpis` program as a library: the suite launcher shared by `cpis dev`,
//! `cpis serve`, the end-to-end tests and the benchmarks.

pub mod bench;
pub mod purge;
pub mod suite;
