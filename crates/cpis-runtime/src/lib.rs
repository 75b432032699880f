//! What every cpis service runs on: the server runner (mutual TLS, health,
//! reflection, graceful shutdown), client channels, identity -> authorization
//! (one policy table), limits, telemetry and metrics, the PostgreSQL pool with
//! TLS and migrations, retention, and the one mapping of errors to gRPC status.
//!
//! Dependencies point one way: `peer` <- `recheck` <- `authz` <- `limits`/`telemetry` <- `server`.

pub mod args;
pub mod authz;
pub mod client;
pub mod db;
pub mod db_tls;
pub mod decode;
pub mod error;
pub mod handshakes;
pub mod limits;
pub mod metrics;
pub mod migrate;
pub mod peer;
pub mod recheck;
pub mod report;
pub mod retention;
pub mod server;
pub mod settings;
pub mod telemetry;
pub mod tls;
pub mod users;

pub use cpis_domain::{Caller, CallerKind, ServiceName};
pub use error::{ApiError, FieldViolation};
