//! The daemon's side of the API: routes over the daemon's operations, errors as JSON.
use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{delete, get, post},
};
use serde::Deserialize;
use tokio::sync::Mutex;

use super::{
    Endpoint, EndpointCreate, ErrorBody, FilterCreate, FilterEntry, Flow, Network, NetworkCreate,
    PortEntry, PortMapping, PortSpecs, Stat,
};
use crate::daemon::{Daemon, Error};

type Shared = State<Arc<Mutex<Daemon>>>;
type Reply<T> = Result<Json<T>, Error>;

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = match &self {
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::Internal(err) => {
                tracing::error!("{err:#}");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        let body = ErrorBody {
            error: self.to_string(),
        };
        (status, Json(body)).into_response()
    }
}

pub fn router(daemon: Arc<Mutex<Daemon>>) -> Router {
    Router::new()
        .route("/networks", get(networks).post(network_create))
        .route("/networks/{name}", get(network).delete(network_rm))
        .route("/endpoints", get(endpoints).post(endpoint_create))
        .route("/endpoints/{name}", get(endpoint).delete(endpoint_rm))
        .route("/endpoints/{name}/publish", post(publish))
        .route("/endpoints/{name}/unpublish", post(unpublish))
        .route("/ports", get(ports))
        .route("/filters", get(filters).post(filter_add))
        .route("/filters/{id}", delete(filter_rm))
        .route("/stats", get(stats))
        .route("/conntrack", get(conntrack).delete(conntrack_flush))
        .with_state(daemon)
}

async fn networks(State(d): Shared) -> Reply<Vec<Network>> {
    Ok(Json(
        d.lock().await.state().networks.values().cloned().collect(),
    ))
}

async fn network(State(d): Shared, Path(name): Path<String>) -> Reply<Network> {
    Ok(Json(d.lock().await.network(&name)?.clone()))
}

async fn network_create(State(d): Shared, Json(req): Json<NetworkCreate>) -> Reply<Network> {
    Ok(Json(d.lock().await.network_create(req).await?))
}

async fn network_rm(State(d): Shared, Path(name): Path<String>) -> Reply<Network> {
    Ok(Json(d.lock().await.network_rm(&name).await?))
}

async fn endpoints(State(d): Shared) -> Reply<Vec<Endpoint>> {
    Ok(Json(
        d.lock().await.state().endpoints.values().cloned().collect(),
    ))
}

async fn endpoint(State(d): Shared, Path(name): Path<String>) -> Reply<Endpoint> {
    Ok(Json(d.lock().await.endpoint(&name)?.clone()))
}

async fn endpoint_create(State(d): Shared, Json(req): Json<EndpointCreate>) -> Reply<Endpoint> {
    Ok(Json(d.lock().await.endpoint_create(req).await?))
}

async fn endpoint_rm(State(d): Shared, Path(name): Path<String>) -> Reply<Endpoint> {
    Ok(Json(d.lock().await.endpoint_rm(&name).await?))
}

async fn publish(
    State(d): Shared,
    Path(name): Path<String>,
    Json(req): Json<PortSpecs>,
) -> Reply<Vec<PortMapping>> {
    Ok(Json(d.lock().await.publish(&name, &req.specs)?))
}

async fn unpublish(
    State(d): Shared,
    Path(name): Path<String>,
    Json(req): Json<PortSpecs>,
) -> Reply<Vec<PortMapping>> {
    Ok(Json(d.lock().await.unpublish(&name, &req.specs)?))
}

#[derive(Deserialize)]
struct EndpointFilter {
    endpoint: Option<String>,
}

async fn ports(State(d): Shared, Query(q): Query<EndpointFilter>) -> Reply<Vec<PortEntry>> {
    Ok(Json(d.lock().await.ports(q.endpoint.as_deref())?))
}

async fn stats(State(d): Shared) -> Reply<Vec<Stat>> {
    Ok(Json(d.lock().await.stats()?))
}

async fn conntrack(State(d): Shared) -> Reply<Vec<Flow>> {
    Ok(Json(d.lock().await.flows()?))
}

async fn conntrack_flush(State(d): Shared, Query(q): Query<EndpointFilter>) -> Reply<usize> {
    Ok(Json(d.lock().await.conntrack_flush(q.endpoint.as_deref())?))
}

async fn filters(State(d): Shared) -> Reply<Vec<FilterEntry>> {
    Ok(Json(d.lock().await.filter_ls()?))
}

async fn filter_add(State(d): Shared, Json(req): Json<FilterCreate>) -> Reply<FilterEntry> {
    Ok(Json(d.lock().await.filter_add(req)?))
}

async fn filter_rm(State(d): Shared, Path(id): Path<String>) -> Reply<FilterEntry> {
    Ok(Json(d.lock().await.filter_rm(&id)?))
}
