//! The gRPC binding (spec §10): `lf.a2a.v1.A2AService` on tonic, calling the same
//! [`A2aEndpoint`] as the other bindings. Service parameters come from metadata; errors become
//! statuses with a `google.rpc.ErrorInfo` detail.

use futures_util::StreamExt;
use tonic::{Request, Response, Status};

use crate::handler::{A2aEndpoint, Binding, RequestContext};
use crate::params::ServiceParams;
use crate::pb;
use crate::pb::a2a_service_server::{A2aService, A2aServiceServer};

/// The tonic service for one endpoint. Several agents on one port are told apart by the
/// request's `tenant` field; see [`TenantRouter`].
#[derive(Clone)]
pub struct GrpcBinding {
    router: TenantRouter,
}

/// Picks the endpoint for a request's `tenant` value.
#[derive(Clone)]
pub struct TenantRouter {
    default: A2aEndpoint,
    by_tenant: std::sync::Arc<std::collections::HashMap<String, A2aEndpoint>>,
}

impl TenantRouter {
    /// Routes every request to `default`.
    pub fn single(default: A2aEndpoint) -> TenantRouter {
        TenantRouter {
            default,
            by_tenant: Default::default(),
        }
    }

    /// Routes requests whose `tenant` is a key of `by_tenant` there, others to `default`.
    pub fn new(
        default: A2aEndpoint,
        by_tenant: std::collections::HashMap<String, A2aEndpoint>,
    ) -> TenantRouter {
        TenantRouter {
            default,
            by_tenant: std::sync::Arc::new(by_tenant),
        }
    }

    fn pick(&self, tenant: &str) -> &A2aEndpoint {
        self.by_tenant.get(tenant).unwrap_or(&self.default)
    }
}

impl GrpcBinding {
    /// The binding for `router`.
    pub fn new(router: TenantRouter) -> GrpcBinding {
        GrpcBinding { router }
    }

    /// The tonic server to add to a gRPC router.
    pub fn into_server(self) -> A2aServiceServer<GrpcBinding> {
        A2aServiceServer::new(self).max_decoding_message_size(crate::jsonrpc::MAX_BODY_BYTES)
    }
}

fn context<T>(request: Request<T>) -> (RequestContext, T) {
    let (metadata, extensions, message) = request.into_parts();
    let ctx = RequestContext::new(
        Binding::Grpc,
        ServiceParams::from_grpc(&metadata),
        extensions,
    );
    (ctx, message)
}

type GrpcStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<pb::StreamResponse, Status>> + Send>>;

macro_rules! unary {
    ($self:ident, $request:ident, $call:ident) => {{
        let (ctx, message) = context($request);
        let endpoint = $self.router.pick(&message.tenant).clone();
        let table = endpoint.error_table();
        endpoint
            .$call(ctx, message)
            .await
            .map(Response::new)
            .map_err(|e| e.to_grpc(table))
    }};
}

macro_rules! streaming {
    ($self:ident, $request:ident, $call:ident) => {{
        let (ctx, message) = context($request);
        let endpoint = $self.router.pick(&message.tenant).clone();
        let table = endpoint.error_table();
        let stream = endpoint
            .$call(ctx, message)
            .await
            .map_err(|e| e.to_grpc(table))?;
        let mapped: GrpcStream =
            Box::pin(stream.map(move |item| item.map_err(|e| e.to_grpc(table))));
        Ok(Response::new(mapped))
    }};
}

#[tonic::async_trait]
impl A2aService for GrpcBinding {
    async fn send_message(
        &self,
        request: Request<pb::SendMessageRequest>,
    ) -> Result<Response<pb::SendMessageResponse>, Status> {
        unary!(self, request, send_message)
    }

    type SendStreamingMessageStream = GrpcStream;

    async fn send_streaming_message(
        &self,
        request: Request<pb::SendMessageRequest>,
    ) -> Result<Response<GrpcStream>, Status> {
        streaming!(self, request, send_streaming_message)
    }

    async fn get_task(
        &self,
        request: Request<pb::GetTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        unary!(self, request, get_task)
    }

    async fn list_tasks(
        &self,
        request: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        unary!(self, request, list_tasks)
    }

    async fn cancel_task(
        &self,
        request: Request<pb::CancelTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        unary!(self, request, cancel_task)
    }

    type SubscribeToTaskStream = GrpcStream;

    async fn subscribe_to_task(
        &self,
        request: Request<pb::SubscribeToTaskRequest>,
    ) -> Result<Response<GrpcStream>, Status> {
        streaming!(self, request, subscribe_to_task)
    }

    async fn create_task_push_notification_config(
        &self,
        request: Request<pb::TaskPushNotificationConfig>,
    ) -> Result<Response<pb::TaskPushNotificationConfig>, Status> {
        unary!(self, request, create_task_push_notification_config)
    }

    async fn get_task_push_notification_config(
        &self,
        request: Request<pb::GetTaskPushNotificationConfigRequest>,
    ) -> Result<Response<pb::TaskPushNotificationConfig>, Status> {
        unary!(self, request, get_task_push_notification_config)
    }

    async fn list_task_push_notification_configs(
        &self,
        request: Request<pb::ListTaskPushNotificationConfigsRequest>,
    ) -> Result<Response<pb::ListTaskPushNotificationConfigsResponse>, Status> {
        unary!(self, request, list_task_push_notification_configs)
    }

    async fn get_extended_agent_card(
        &self,
        request: Request<pb::GetExtendedAgentCardRequest>,
    ) -> Result<Response<pb::AgentCard>, Status> {
        unary!(self, request, get_extended_agent_card)
    }

    async fn delete_task_push_notification_config(
        &self,
        request: Request<pb::DeleteTaskPushNotificationConfigRequest>,
    ) -> Result<Response<pbjson_types::Empty>, Status> {
        let (ctx, message) = context(request);
        let endpoint = self.router.pick(&message.tenant).clone();
        let table = endpoint.error_table();
        endpoint
            .delete_task_push_notification_config(ctx, message)
            .await
            .map(|()| Response::new(pbjson_types::Empty {}))
            .map_err(|e| e.to_grpc(table))
    }
}
