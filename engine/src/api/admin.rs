//! `AdminService`: this instance's views.

use std::sync::Arc;

use qm_projections::ProjectorState;
use qm_proto::api::v1::admin_service_server::AdminService;
use qm_proto::api::v1::*;
use tonic::{Request, Response, Status};

use crate::read_side::ReadSide;

#[derive(Debug, Clone)]
pub struct Admin {
    read_side: Arc<ReadSide>,
}

impl Admin {
    pub fn new(read_side: Arc<ReadSide>) -> Admin {
        Admin { read_side }
    }
}

#[tonic::async_trait]
impl AdminService for Admin {
    async fn get_projection_status(
        &self,
        _: Request<GetProjectionStatusRequest>,
    ) -> Result<Response<GetProjectionStatusResponse>, Status> {
        let status = self.read_side.status().await;
        let rebuild = status.rebuild.clone().unwrap_or_default();
        Ok(Response::new(GetProjectionStatusResponse {
            position: status.position,
            head: status.head.unwrap_or(0),
            lag: status.lag.unwrap_or(0),
            state: match status.state {
                ProjectorState::Running => "running".into(),
                ProjectorState::Failed { error } => format!("failed: {error}"),
            },
            rebuilding: status.rebuild.is_some(),
            rebuild_applied: rebuild.applied,
            rebuild_target: rebuild.target,
        }))
    }

    async fn rebuild_projections(
        &self,
        _: Request<RebuildProjectionsRequest>,
    ) -> Result<Response<RebuildProjectionsResponse>, Status> {
        let report = self.read_side.rebuild(|_| {}).await?;
        Ok(Response::new(RebuildProjectionsResponse {
            position: report.applied,
            seconds: report.elapsed.as_secs_f64(),
            commits_per_second: report.commits_per_s,
        }))
    }
}
