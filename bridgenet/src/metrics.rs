//! Prometheus metrics (`daemon --metrics ADDR:PORT`): the exposition format, written by
//! prometheus-client from what the daemon reads at each scrape, and the API's own request
//! counts and latencies, which the API server records as it answers.
use std::{
    sync::{Arc, LazyLock},
    time::Instant,
};

use axum::{
    Router,
    extract::{MatchedPath, Request, State},
    http::{StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::get,
};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Registry, Unit},
};
use tokio::sync::Mutex;

use crate::daemon::{self, Daemon, Options};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiRequest {
    method: String,
    /// The route (`/endpoints/{name}`), not the path: one series per route.
    path: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiRoute {
    method: String,
    path: String,
}

/// The API's requests since the daemon started.
struct ApiMetrics {
    requests: Family<ApiRequest, Counter>,
    latency: Family<ApiRoute, Histogram>,
}

fn latency_histogram() -> Histogram {
    // 100 µs to about 1.6 s.
    Histogram::new(exponential_buckets(0.0001, 4.0, 8))
}

static API: LazyLock<ApiMetrics> = LazyLock::new(|| ApiMetrics {
    requests: Family::default(),
    latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
});

/// Middleware of the API server: counts each request and times it.
pub async fn track(req: Request, next: Next) -> Response {
    let method = req.method().to_string();
    let path = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let start = Instant::now();
    let response = next.run(req).await;
    API.latency
        .get_or_create(&ApiRoute {
            method: method.clone(),
            path: path.clone(),
        })
        .observe(start.elapsed().as_secs_f64());
    API.requests
        .get_or_create(&ApiRequest {
            method,
            path,
            status: response.status().as_u16(),
        })
        .inc();
    response
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProgramOutcome {
    program: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProtoState {
    proto: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapName {
    map: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointDirection {
    endpoint: String,
    network: String,
    /// `in`: to the endpoint; `out`: from it.
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UplinkAddr {
    uplink: String,
    address: String,
}

/// The routes of the metrics listener.
pub fn router(daemon: Arc<Mutex<Daemon>>, _: &Options) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(daemon)
}

async fn metrics(State(d): State<Arc<Mutex<Daemon>>>) -> Response {
    match scrape(&d).await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(err) => {
            tracing::warn!("metrics: {err}");
            (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()).into_response()
        }
    }
}

/// Reads the daemon (the conntrack census without its lock) and writes the exposition.
async fn scrape(d: &Mutex<Daemon>) -> Result<String, daemon::Error> {
    let (seen, reader) = d.lock().await.observe()?;
    let census = daemon::walk_census(reader).await?;
    let traffic = seen.traffic.read().await?;
    let mut registry = Registry::with_prefix("bridgenet");

    let packets = Family::<ProgramOutcome, Counter>::default();
    let drops = Family::<Reason, Counter>::default();
    for s in &seen.stats {
        packets
            .get_or_create(&ProgramOutcome {
                program: s.program.clone(),
                outcome: s.outcome.clone(),
            })
            .inc_by(s.count);
        if s.outcome.starts_with("drop_") {
            drops
                .get_or_create(&Reason {
                    reason: s.outcome.clone(),
                })
                .inc_by(s.count);
        }
    }
    registry.register(
        "packets",
        "Packets each program handled, by outcome (bridgenet stats)",
        packets,
    );
    registry.register(
        "drops",
        "Packets dropped, by reason, all programs together",
        drops,
    );

    let flows = Family::<ProtoState, Gauge>::default();
    for ((proto, state), n) in &census.by_state {
        flows
            .get_or_create(&ProtoState {
                proto: daemon::proto_name(*proto),
                state: (*state).into(),
            })
            .set(*n as i64);
    }
    registry.register(
        "conntrack_flows",
        "Tracked flows by protocol and state",
        flows,
    );
    let limit = Gauge::<i64>::default();
    limit.set(seen.conntrack_limit as i64);
    registry.register(
        "conntrack_flows_limit",
        "Flows the conntrack table holds (--conntrack-max)",
        limit,
    );

    let entries = Family::<MapName, Gauge>::default();
    let max_entries = Family::<MapName, Gauge>::default();
    for m in &seen.maps {
        let label = MapName { map: m.name.into() };
        if let Some(n) = m.entries {
            entries.get_or_create(&label).set(n as i64);
        }
        max_entries.get_or_create(&label).set(m.max_entries as i64);
    }
    registry.register(
        "map_entries",
        "Entries in each hash map (CONNTRACK: the datapath's count of flows against its limit)",
        entries,
    );
    registry.register(
        "map_max_entries",
        "Entries each map may hold (CONNTRACK: its limit of flows)",
        max_entries,
    );

    let ports = Family::<UplinkAddr, Gauge>::default();
    for (uplink, addr) in &seen.uplinks {
        ports
            .get_or_create(&UplinkAddr {
                uplink: uplink.clone(),
                address: addr.to_string(),
            })
            .set(census.masquerade.get(addr).copied().unwrap_or(0) as i64);
    }
    registry.register(
        "masquerade_ports_in_use",
        "Masqueraded flows leaving with each uplink's address (each holds a source port)",
        ports,
    );

    let packets = Family::<EndpointDirection, Counter>::default();
    let bytes = Family::<EndpointDirection, Counter>::default();
    for t in &traffic {
        let h = t.host_end;
        for (direction, p, b) in [
            ("in", h.tx_packets, h.tx_bytes),
            ("out", h.rx_packets, h.rx_bytes),
        ] {
            let labels = EndpointDirection {
                endpoint: t.endpoint.clone(),
                network: t.network.clone(),
                direction,
            };
            packets.get_or_create(&labels).inc_by(p);
            bytes.get_or_create(&labels).inc_by(b);
        }
    }
    registry.register(
        "endpoint_packets",
        "Packets to (in) and from (out) each endpoint, as its veth counts them",
        packets,
    );
    registry.register_with_unit(
        "endpoint",
        "Bytes to (in) and from (out) each endpoint, as its veth counts them",
        Unit::Bytes,
        bytes,
    );

    let gc = seen.gc;
    let passes = Counter::<u64>::default();
    passes.inc_by(gc.passes);
    registry.register("conntrack_gc_passes", "Conntrack GC passes", passes);
    let removed = Family::<Reason, Counter>::default();
    removed
        .get_or_create(&Reason {
            reason: "expired".into(),
        })
        .inc_by(gc.flows_expired);
    removed
        .get_or_create(&Reason {
            reason: "orphaned".into(),
        })
        .inc_by(gc.orphans_removed);
    registry.register(
        "conntrack_gc_removed",
        "What conntrack GC removed: expired flows, orphaned entries",
        removed,
    );
    let duration = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    duration.set(gc.last_duration.as_secs_f64());
    registry.register_with_unit(
        "conntrack_gc_last_duration",
        "How long the last conntrack GC pass took",
        Unit::Seconds,
        duration,
    );

    registry.register(
        "api_requests",
        "API requests by method, route and status",
        API.requests.clone(),
    );
    registry.register_with_unit(
        "api_request_duration",
        "API request latency by method and route",
        Unit::Seconds,
        API.latency.clone(),
    );

    let mut text = String::new();
    encode(&mut text, &registry).map_err(anyhow::Error::from)?;
    Ok(text)
}
