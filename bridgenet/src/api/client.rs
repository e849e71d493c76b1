//! The CLI's side of the API: one HTTP/1.1 request per connection over the Unix socket.
use std::path::Path;

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde::{Serialize, de::DeserializeOwned};

use super::ErrorBody;

/// Sends `method path` with an optional JSON body and decodes the JSON answer; an error
/// answer becomes an error carrying the daemon's message.
pub async fn call<T: DeserializeOwned>(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<&impl Serialize>,
) -> Result<T> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .with_context(|| {
            format!(
                "cannot reach the daemon at {} (is `bridgenet daemon` running?)",
                socket.display()
            )
        })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("talking to the daemon")?;
    tokio::spawn(connection);
    let body = match body {
        Some(body) => Full::new(Bytes::from(serde_json::to_vec(body)?)),
        None => Full::new(Bytes::new()),
    };
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "bridgenet")
        .header("content-type", "application/json")
        .body(body)?;
    let response = sender
        .send_request(request)
        .await
        .context("talking to the daemon")?;
    let status = response.status();
    let bytes = response.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(err) => bail!("{}", err.error),
            Err(_) => bail!("the daemon answered {status}"),
        }
    }
    serde_json::from_slice(&bytes).context("decoding the daemon's answer")
}
