//! What every cpis service shares: mutual-TLS identity and the one
//! authorization table, validation of NHS numbers and dates, PostgreSQL
//! (pool, migrations, a private development cluster), the development PKI,
//! errors mapped to gRPC status codes, and the server runner with health,
//! reflection and graceful shutdown.

pub mod authz;
pub mod client;
pub mod db;
pub mod db_tls;
pub mod error;
pub mod identity;
pub mod limits;
pub mod metrics;
pub mod migrate;
pub mod pgcluster;
pub mod pki;
pub mod plan_csv;
pub mod retention;
pub mod server;
pub mod telemetry;
pub mod time;
pub mod tls;
pub mod validate;

pub use error::{ApiError, FieldViolation};
pub use identity::{Caller, CallerKind, ServiceName};
