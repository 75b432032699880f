//! The Registry service: councils keep their register of plans; the
//! Attendance service looks flags up.

use cpis_core::db::{DbPool, Migration};
use cpis_proto::registry::v1 as pb;
use tonic::{Request, Response, Status, Streaming};

/// The gRPC name of this service (readiness is reported under it).
pub const SERVICE_NAME: &str = "cpis.registry.v1.RegistryService";

/// The schema this service owns.
pub const SCHEMA: &str = "registry";

/// Schema migrations, applied in order at start-up.
pub const MIGRATIONS: &[Migration] = &[];

/// Settings of the Registry service.
#[derive(Debug, Clone)]
pub struct Config {
    /// A snapshot ending more than this share of active plans is refused
    /// unless it says `allow_mass_end`.
    pub mass_end_share: f64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            mass_end_share: 0.10,
        }
    }
}

/// The Registry service.
#[derive(Debug, Clone)]
pub struct Registry {
    #[allow(dead_code)]
    pool: DbPool,
    #[allow(dead_code)]
    config: Config,
}

impl Registry {
    /// Migrates the schema and builds the service.
    pub async fn new(config: Config, pool: DbPool) -> anyhow::Result<Self> {
        cpis_core::db::migrate(&pool, SCHEMA, MIGRATIONS).await?;
        Ok(Self { pool, config })
    }

    /// The gRPC routes of this service.
    pub fn routes(&self) -> tonic::service::Routes {
        tonic::service::Routes::new(pb::registry_service_server::RegistryServiceServer::new(
            self.clone(),
        ))
    }
}

#[tonic::async_trait]
impl pb::registry_service_server::RegistryService for Registry {
    async fn upsert_plan(
        &self,
        _r: Request<pb::UpsertPlanRequest>,
    ) -> Result<Response<pb::UpsertPlanResponse>, Status> {
        Err(Status::unimplemented("UpsertPlan is not implemented yet"))
    }
    async fn end_plan(
        &self,
        _r: Request<pb::EndPlanRequest>,
    ) -> Result<Response<pb::EndPlanResponse>, Status> {
        Err(Status::unimplemented("EndPlan is not implemented yet"))
    }
    async fn delete_plan(
        &self,
        _r: Request<pb::DeletePlanRequest>,
    ) -> Result<Response<pb::DeletePlanResponse>, Status> {
        Err(Status::unimplemented("DeletePlan is not implemented yet"))
    }
    async fn get_plan(
        &self,
        _r: Request<pb::GetPlanRequest>,
    ) -> Result<Response<pb::GetPlanResponse>, Status> {
        Err(Status::unimplemented("GetPlan is not implemented yet"))
    }
    async fn list_plans(
        &self,
        _r: Request<pb::ListPlansRequest>,
    ) -> Result<Response<pb::ListPlansResponse>, Status> {
        Err(Status::unimplemented("ListPlans is not implemented yet"))
    }
    async fn sync_plans(
        &self,
        _r: Request<Streaming<pb::SyncPlansRequest>>,
    ) -> Result<Response<pb::SyncPlansResponse>, Status> {
        Err(Status::unimplemented("SyncPlans is not implemented yet"))
    }
    async fn lookup_flags(
        &self,
        _r: Request<pb::LookupFlagsRequest>,
    ) -> Result<Response<pb::LookupFlagsResponse>, Status> {
        Err(Status::unimplemented("LookupFlags is not implemented yet"))
    }
}
