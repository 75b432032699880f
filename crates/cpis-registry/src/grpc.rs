//! The gRPC surface: each method takes the caller, runs one operation
//! returning `Result<_, ApiError>`, and converts. Who may call which method
//! is the authorization layer's `POLICY` (only councils reach the plan
//! methods, only the Attendance service `LookupFlags`); nothing here checks it again.

use crate::Registry;
use cpis_proto::registry::v1 as pb;
use cpis_runtime::authz::caller;
use cpis_runtime::recheck::Identity;
use cpis_runtime::{ApiError, Caller};
use tonic::{Request, Response, Status, Streaming};

/// The calling council's code, as the authorization layer verified it.
fn council<T>(req: &Request<T>) -> Result<String, ApiError> {
    match caller(req)? {
        Caller::Council(code) => Ok(code),
        _ => Err(ApiError::internal("a plan method was reached by a caller other than a council")),
    }
}

#[tonic::async_trait]
impl pb::registry_service_server::RegistryService for Registry {
    async fn upsert_plan(
        &self,
        req: Request<pb::UpsertPlanRequest>,
    ) -> Result<Response<pb::UpsertPlanResponse>, Status> {
        let council = council(&req)?;
        let (plan, warnings) = self.upsert(&council, req.into_inner()).await?;
        Ok(Response::new(pb::UpsertPlanResponse { plan: Some(plan), warnings }))
    }

    async fn end_plan(&self, req: Request<pb::EndPlanRequest>) -> Result<Response<pb::EndPlanResponse>, Status> {
        let council = council(&req)?;
        let plan = self.end(&council, req.into_inner()).await?;
        Ok(Response::new(pb::EndPlanResponse { plan: Some(plan) }))
    }

    async fn delete_plan(
        &self,
        req: Request<pb::DeletePlanRequest>,
    ) -> Result<Response<pb::DeletePlanResponse>, Status> {
        let council = council(&req)?;
        self.delete(&council, req.into_inner()).await?;
        Ok(Response::new(pb::DeletePlanResponse {}))
    }

    async fn get_plan(&self, req: Request<pb::GetPlanRequest>) -> Result<Response<pb::GetPlanResponse>, Status> {
        let council = council(&req)?;
        let plan = self.get(&council, req.into_inner()).await?;
        Ok(Response::new(pb::GetPlanResponse { plan: Some(plan) }))
    }

    async fn list_plans(&self, req: Request<pb::ListPlansRequest>) -> Result<Response<pb::ListPlansResponse>, Status> {
        let council = council(&req)?;
        Ok(Response::new(self.list(&council, req.into_inner()).await?))
    }

    async fn sync_plans(
        &self,
        req: Request<Streaming<pb::SyncPlansRequest>>,
    ) -> Result<Response<pb::SyncPlansResponse>, Status> {
        let (council, identity) = (council(&req)?, Identity::of(&req));
        Ok(Response::new(self.sync(&council, &identity, req.into_inner()).await?))
    }

    async fn lookup_flags(
        &self,
        req: Request<pb::LookupFlagsRequest>,
    ) -> Result<Response<pb::LookupFlagsResponse>, Status> {
        Ok(Response::new(self.lookup(req.into_inner()).await?))
    }

    async fn lookup_flags_batch(
        &self,
        req: Request<pb::LookupFlagsBatchRequest>,
    ) -> Result<Response<pb::LookupFlagsBatchResponse>, Status> {
        Ok(Response::new(self.lookup_batch(req.into_inner()).await?))
    }

    async fn report_plans(
        &self,
        req: Request<pb::ReportPlansRequest>,
    ) -> Result<Response<pb::ReportPlansResponse>, Status> {
        let audience = cpis_runtime::report::Audience::of(&caller(&req)?)?;
        Ok(Response::new(self.report_plans(&audience, req.get_ref()).await?))
    }

    async fn record_nhs_number_change(
        &self,
        req: Request<pb::RecordNhsNumberChangeRequest>,
    ) -> Result<Response<pb::RecordNhsNumberChangeResponse>, Status> {
        Ok(Response::new(self.record_nhs_number_change(req.into_inner()).await?))
    }
}
