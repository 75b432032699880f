//! The `cpis` client commands a setting, a council or an operator runs
//! against a running suite (check in, subscribe, upload a council's CSV,
//! list, ...), the scripted demo, and the reader of the council CSV format.

pub mod client;
pub mod demo;
pub mod plan_csv;
pub mod users;
