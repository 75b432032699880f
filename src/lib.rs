//! The `cpis` program as a library: the suite launcher shared by `cpis dev`,
//! `cpis serve`, the end-to-end tests and the benchmark (crates/cpis-bench).

pub mod purge;
pub mod suite;
