//! The daemon's side of the API: routes over the daemon's operations, errors as JSON. Every
//! error, the operations' and axum's own (a body that is not JSON or not of the request's
//! type, a wrong content type, path, method or query), has one shape: `{"error": "..."}`.
use std::{collections::BTreeMap, sync::Arc};

use axum::{
    Extension, Router,
    body::Body,
    extract::{FromRequest, FromRequestParts, Request, State, rejection::JsonRejection},
    http::{Method, StatusCode, Uri, header, request::Parts},
    response::{IntoResponse, Response},
    routing::{delete, get, post},
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tokio::sync::Mutex;

use crate::api::{
    CniAdd, CniAttached, CniAttachment, CniGc, CtQuery, Endpoint, EndpointCreate, ErrorBody,
    FilterCreate, FilterEntry, FlowCount, MonitorQuery, Network, NetworkCreate, PortEntry,
    PortMapping, PortSpecs, Stat, Status,
};
use crate::daemon::{self, Daemon, Error, Options};
use crate::docker::names::ContainerNames;

type Shared = State<Arc<Mutex<Daemon>>>;
type Reply<T> = Result<Json<T>, Error>;

/// The one error answer: `status` with `{"error": message}`.
fn error_response(status: StatusCode, message: String) -> Response {
    (status, axum::Json(ErrorBody { error: message })).into_response()
}

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
        error_response(status, self.to_string())
    }
}

/// A request axum refused before any operation ran, with axum's status and message.
struct Rejected(StatusCode, String);

impl IntoResponse for Rejected {
    fn into_response(self) -> Response {
        error_response(self.0, self.1)
    }
}

/// axum's `Json`, `Path` and `Query` with their rejections in the API's error shape.
struct Json<T>(T);
struct Path<T>(T);
struct Query<T>(T);

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = Rejected;

    async fn from_request(req: Request, state: &S) -> Result<Self, Rejected> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Json(value)),
            Err(rejection) => Err(rejected(&rejection)),
        }
    }
}

fn rejected(rejection: &JsonRejection) -> Rejected {
    Rejected(rejection.status(), rejection.body_text())
}

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = Rejected;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Rejected> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Path(p.0))
            .map_err(|r| Rejected(r.status(), r.body_text()))
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = Rejected;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Rejected> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|r| Rejected(r.status(), r.body_text()))
    }
}

async fn no_route(method: Method, uri: Uri) -> Rejected {
    Rejected(
        StatusCode::NOT_FOUND,
        format!("no API path {method} {}", uri.path()),
    )
}

async fn wrong_method(method: Method, uri: Uri) -> Rejected {
    Rejected(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} does not take {method}", uri.path()),
    )
}

/// The API's routes (a `daemon::MakeRouter`).
pub fn router(daemon: Arc<Mutex<Daemon>>, options: &Options) -> Router {
    let names = Arc::new(ContainerNames::new(options.docker_host.clone()));
    Router::new()
        .route("/networks", get(networks).post(network_create))
        .route("/networks/{name}", get(network).delete(network_rm))
        .route("/endpoints", get(endpoints).post(endpoint_create))
        .route("/endpoints/{name}", get(endpoint).delete(endpoint_rm))
        .route("/endpoints/{name}/publish", post(publish))
        .route("/endpoints/{name}/unpublish", post(unpublish))
        .route("/ports", get(ports))
        .route("/containers", get(containers))
        .route("/cni/attachments", post(cni_add))
        .route(
            "/cni/attachments/{container_id}/{ifname}",
            get(cni_check).delete(cni_del),
        )
        .route("/cni/gc", post(cni_gc))
        .route("/filters", get(filters).post(filter_add))
        .route("/filters/{id}", delete(filter_rm))
        .route("/stats", get(stats))
        .route("/conntrack", get(conntrack).delete(conntrack_flush))
        .route("/status", get(status))
        .route("/monitor", get(monitor))
        .route_layer(axum::middleware::from_fn(crate::metrics::track))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(Extension(names))
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
#[serde(deny_unknown_fields)]
struct EndpointFilter {
    endpoint: Option<String>,
}

/// Docker's container names by endpoint (`endpoint ls`), asked outside the daemon's lock.
async fn containers(
    State(d): Shared,
    Extension(names): Extension<Arc<ContainerNames>>,
) -> Reply<BTreeMap<String, String>> {
    let networks: Vec<String> = d.lock().await.state().networks.keys().cloned().collect();
    Ok(Json(names.of(&networks).await.into_iter().collect()))
}

/// `port ls [EP|CONTAINER]`: Docker's endpoints with their container's name, asked of Docker
/// outside the daemon's lock; a container name stands for its endpoint.
async fn ports(
    State(d): Shared,
    Extension(names): Extension<Arc<ContainerNames>>,
    Query(q): Query<EndpointFilter>,
) -> Reply<Vec<PortEntry>> {
    let (networks, known) = {
        let d = d.lock().await;
        let networks: Vec<String> = d.state().networks.keys().cloned().collect();
        let known = q
            .endpoint
            .as_deref()
            .is_none_or(|e| d.state().endpoints.contains_key(e));
        (networks, known)
    };
    let names = names.of(&networks).await;
    let endpoint = match q.endpoint {
        Some(e) if !known => names
            .iter()
            .find(|(_, container)| **container == e)
            .map_or(Some(e), |(endpoint, _)| Some(endpoint.clone())),
        other => other,
    };
    let mut entries = d.lock().await.ports(endpoint.as_deref())?;
    for entry in &mut entries {
        entry.container = names.get(&entry.endpoint).cloned();
    }
    Ok(Json(entries))
}

async fn stats(State(d): Shared) -> Reply<Vec<Stat>> {
    Ok(Json(d.lock().await.stats()?))
}

/// Streamed (newline-delimited JSON) or counted; the table is walked without the daemon's
/// lock, which is held only to resolve the filters.
async fn conntrack(State(d): Shared, Query(q): Query<CtQuery>) -> Result<Response, Error> {
    let (reader, filter) = d.lock().await.flow_listing(&q)?;
    if q.count {
        let flows = daemon::count_flows(reader, filter).await?;
        return Ok(Json(FlowCount { flows }).into_response());
    }
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(daemon::stream_flows(reader, filter)),
    )
        .into_response())
}

/// Streamed (newline-delimited JSON) until the client goes away.
async fn monitor(State(d): Shared, Query(q): Query<MonitorQuery>) -> Result<Response, Error> {
    let (monitor, filter) = d.lock().await.monitor_filter(&q)?;
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(daemon::stream_monitor(monitor, filter, d)),
    )
        .into_response())
}

async fn status(State(d): Shared) -> Reply<Status> {
    let (status, reader) = d.lock().await.status().await?;
    Ok(Json(daemon::census(status, reader).await?))
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

async fn cni_add(State(d): Shared, Json(req): Json<CniAdd>) -> Reply<CniAttached> {
    Ok(Json(d.lock().await.cni_add(req).await?))
}

async fn cni_check(
    State(d): Shared,
    Path((container_id, ifname)): Path<(String, String)>,
) -> Reply<CniAttached> {
    let a = CniAttachment {
        container_id,
        ifname,
    };
    Ok(Json(d.lock().await.cni_check(&a).await?))
}

async fn cni_del(
    State(d): Shared,
    Path((container_id, ifname)): Path<(String, String)>,
) -> Reply<Option<Endpoint>> {
    let a = CniAttachment {
        container_id,
        ifname,
    };
    Ok(Json(d.lock().await.cni_del(&a).await?))
}

async fn cni_gc(State(d): Shared, Json(req): Json<CniGc>) -> Reply<Vec<Endpoint>> {
    Ok(Json(d.lock().await.cni_gc(&req.network, &req.valid).await?))
}
