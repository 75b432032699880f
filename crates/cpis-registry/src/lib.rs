//! The Registry service: councils keep their register of plans (one at a
//! time or as a complete snapshot); the Attendance service looks flags up.
//!
//! A newcomer's map: [`grpc`] (each RPC: caller, one operation, conversion)
//! -> the operations in `plans`, `upload` (+ [`sync`]'s rules) and `lookup`
//! -> [`store`], which holds all of the service's SQL; [`model`] validates
//! what councils send; [`share`] shares the pool out; [`seed`] bulk-loads
//! plans for benchmarks.
//!
//! A council only ever sees and changes its own plans: another council's plan
//! is `NOT_FOUND`, so the existence of a plan never leaks.

pub mod councils;
pub mod demographics;
mod grpc;
pub mod lookup;
pub mod model;
mod plans;
mod report;
pub mod retention;
pub mod seed;
pub mod settings;
pub mod share;
pub mod snapshot;
pub mod store;
pub mod sync;
mod upload;

use chrono::NaiveDate;
use cpis_proto::registry::v1 as pb;
use cpis_runtime::db::DbPool;
use cpis_runtime::migrate::{Frozen, Migrations};
use cpis_runtime::ApiError;
use share::CouncilConn;
use std::sync::Arc;

/// The gRPC name of this service (readiness is reported under it).
pub const SERVICE_NAME: &str = "cpis.registry.v1.RegistryService";

/// The schema this service owns.
pub const SCHEMA: &str = "registry";

/// Schema migrations (`migrations/V{n}__{name}.sql`), applied in order at start-up.
pub const MIGRATIONS: Migrations = Migrations { schema: SCHEMA, runner: embedded::migrations::runner, frozen: FROZEN };

/// The migrations embedded from `migrations/`.
mod embedded {
    cpis_runtime::migrate::embed_migrations!("migrations");
}

/// The migrations the earlier hand-rolled runner applied, frozen: a database
/// it migrated is adopted with these checksums (see [`cpis_runtime::migrate`]).
const FROZEN: &[Frozen] = &[
    Frozen { version: 1, name: "plans", checksum: 912621387799110271 },
    Frozen { version: 2, name: "retention", checksum: 4982255876789736658 },
    Frozen { version: 3, name: "sync_uploads", checksum: 7079598716761122268 },
];

pub use settings::{Settings, DEFAULT_UNBORN_SCOPE_DAYS};

/// The Registry service.
#[derive(Debug, Clone)]
pub struct Registry {
    pool: DbPool,
    config: Settings,
    councils: Arc<share::CouncilGate>,
}

/// Borrows the tokio-postgres client inside a pooled connection.
pub(crate) fn pg(client: &deadpool_postgres::Client) -> &tokio_postgres::Client {
    client
}

fn today() -> NaiveDate {
    cpis_domain::time::today_in_london()
}

impl Registry {
    /// Migrates the schema and builds the service.
    pub async fn new(config: Settings, pool: DbPool) -> anyhow::Result<Self> {
        MIGRATIONS.run(&pool).await?;
        let (for_councils, per_council) =
            share::split(pool.status().max_size, config.lookup_reserved_connections, config.connections_per_council);
        let councils = Arc::new(share::CouncilGate::new(for_councils, per_council, config.council_wait));
        Ok(Self { pool, config, councils })
    }

    /// A connection for `council`'s work, within its share of the pool.
    async fn council_db(&self, council: &str) -> Result<CouncilConn, ApiError> {
        let permit = self.councils.enter(council).await?;
        Ok(CouncilConn::new(self.pool.get().await?, permit))
    }

    /// The gRPC routes of this service.
    pub fn routes(&self) -> tonic::service::Routes {
        tonic::service::Routes::new(
            pb::registry_service_server::RegistryServiceServer::new(self.clone())
                .max_decoding_message_size(cpis_runtime::limits::MAX_MESSAGE_BYTES),
        )
    }
}

#[cfg(test)]
mod migration_tests {
    /// A migration file the earlier runner may have applied is never edited.
    #[test]
    fn frozen_migrations_are_unchanged() {
        super::MIGRATIONS.check_frozen().unwrap();
    }
}
