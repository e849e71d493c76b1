//! The CLI's side of the API: one HTTP/1.1 request per connection over the Unix socket.
use std::path::Path;

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde::{Serialize, de::DeserializeOwned};

use super::ErrorBody;

/// The daemon did not answer on its socket (not running, or not there yet).
#[derive(Debug)]
pub struct Unreachable(pub String);

/// The daemon answered with an error status and its one-line message.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub message: String,
}

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Unreachable {}
impl std::error::Error for Refused {}

/// Sends `method path` with an optional JSON body and decodes the JSON answer; an error
/// answer becomes a [`Refused`] carrying the daemon's message, a socket nobody answers on an
/// [`Unreachable`].
pub async fn call<T: DeserializeOwned>(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<&impl Serialize>,
) -> Result<T> {
    let response = request(socket, method, path, body).await?;
    let bytes = response.into_body().collect().await?.to_bytes();
    serde_json::from_slice(&bytes).context("decoding the daemon's answer")
}

/// `GET path` of a streamed listing (newline-delimited JSON): calls `each` with every line as
/// it arrives, and `flush` after each piece the daemon sent, so that nothing waits for, or
/// holds, the whole listing. A line `{"error": ...}` (the daemon failed midway) ends it with
/// that error.
pub async fn stream<T: DeserializeOwned>(
    socket: &Path,
    path: &str,
    mut each: impl FnMut(T) -> Result<()>,
    mut flush: impl FnMut() -> Result<()>,
) -> Result<()> {
    let mut body = request(socket, Method::GET, path, None::<&()>)
        .await?
        .into_body();
    let mut pending: Vec<u8> = Vec::new();
    let mut line = |line: &[u8]| -> Result<()> {
        match serde_json::from_slice(line) {
            Ok(item) => each(item),
            Err(err) => match serde_json::from_slice::<ErrorBody>(line) {
                Ok(daemon) => bail!("{}", daemon.error),
                Err(_) => Err(err).context("decoding the daemon's answer"),
            },
        }
    };
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.context("reading the daemon's answer")?.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        let mut start = 0;
        while let Some(end) = pending[start..].iter().position(|b| *b == b'\n') {
            // Empty lines keep a quiet stream alive (`monitor`).
            if end > 0 {
                line(&pending[start..start + end])?;
            }
            start += end + 1;
        }
        pending.drain(..start);
        flush()?;
    }
    if !pending.is_empty() {
        line(&pending)?;
    }
    Ok(())
}

/// Sends one request; an error answer becomes a [`Refused`] carrying the daemon's message, a
/// socket nobody answers on an [`Unreachable`].
async fn request(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<&impl Serialize>,
) -> Result<hyper::Response<hyper::body::Incoming>> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|err| {
            Unreachable(format!(
                "cannot reach the daemon at {} (is `bridgenet daemon` running?): {err}",
                socket.display()
            ))
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
    if !status.is_success() {
        let bytes = response.into_body().collect().await?.to_bytes();
        let message = match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(err) => err.error,
            Err(_) => format!("the daemon answered {status}"),
        };
        return Err(Refused {
            status: status.as_u16(),
            message,
        }
        .into());
    }
    Ok(response)
}
