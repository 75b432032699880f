//! The Attendance service: a setting checks a person in and sees their flags;
//! the responsible councils are alerted through a durable outbox.

use cpis_core::db::{DbPool, Migration};
use cpis_core::server::Shutdown;
use cpis_proto::attendance::v1 as pb;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// The gRPC name of this service (readiness is reported under it).
pub const SERVICE_NAME: &str = "cpis.attendance.v1.AttendanceService";

/// The schema this service owns.
pub const SCHEMA: &str = "attendance";

/// Schema migrations, applied in order at start-up.
pub const MIGRATIONS: &[Migration] = &[];

/// Settings of the Attendance service.
#[derive(Debug, Clone, Default)]
pub struct Config {}

/// The Attendance service.
#[derive(Debug, Clone)]
pub struct Attendance {
    #[allow(dead_code)]
    pool: DbPool,
    #[allow(dead_code)]
    config: Config,
    #[allow(dead_code)]
    registry: Channel,
    #[allow(dead_code)]
    notification: Channel,
    #[allow(dead_code)]
    shutdown: Shutdown,
}

impl Attendance {
    /// Migrates the schema and builds the service. `registry` and
    /// `notification` are mutual-TLS channels presenting the attendance identity.
    pub async fn new(
        config: Config,
        pool: DbPool,
        registry: Channel,
        notification: Channel,
        shutdown: Shutdown,
    ) -> anyhow::Result<Self> {
        cpis_core::db::migrate(&pool, SCHEMA, MIGRATIONS).await?;
        Ok(Self {
            pool,
            config,
            registry,
            notification,
            shutdown,
        })
    }

    /// The gRPC routes of this service.
    pub fn routes(&self) -> tonic::service::Routes {
        tonic::service::Routes::new(pb::attendance_service_server::AttendanceServiceServer::new(
            self.clone(),
        ))
    }
}

#[tonic::async_trait]
impl pb::attendance_service_server::AttendanceService for Attendance {
    async fn check_in(
        &self,
        _r: Request<pb::CheckInRequest>,
    ) -> Result<Response<pb::CheckInResponse>, Status> {
        Err(Status::unimplemented("CheckIn is not implemented yet"))
    }
    async fn list_episodes(
        &self,
        _r: Request<pb::ListEpisodesRequest>,
    ) -> Result<Response<pb::ListEpisodesResponse>, Status> {
        Err(Status::unimplemented("ListEpisodes is not implemented yet"))
    }
    async fn list_accesses(
        &self,
        _r: Request<pb::ListAccessesRequest>,
    ) -> Result<Response<pb::ListAccessesResponse>, Status> {
        Err(Status::unimplemented("ListAccesses is not implemented yet"))
    }
}
