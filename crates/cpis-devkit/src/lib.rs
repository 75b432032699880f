//! Development tools that no service runs in production: a development PKI
//! issuing SPIFFE-style certificates for every caller kind, and a private,
//! throwaway PostgreSQL cluster (TLS on), and a development identity
//! provider signing CIS2-shaped user tokens. Used by `cpis dev`, `cpis certs`,
//! the end-to-end tests and the benchmark.

pub mod pgcluster;
pub mod pki;
pub mod users;
