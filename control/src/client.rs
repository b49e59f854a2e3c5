//! A control-socket client: one JSON-RPC call per line, used by the CLI and by the lab.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

/// What a call can end with.
#[derive(Debug)]
pub enum CallError {
    /// Nothing answers on the socket.
    Unreachable(String),
    /// The daemon answered with a JSON-RPC error.
    Rpc {
        code: i64,
        message: String,
        data: Option<Value>,
    },
    /// The answer made no sense.
    Protocol(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Unreachable(m) => write!(f, "{m}"),
            CallError::Rpc { message, .. } => write!(f, "{message}"),
            CallError::Protocol(m) => write!(f, "bad answer from the daemon: {m}"),
        }
    }
}

/// Calls `method` with `params` on the daemon at `socket`.
pub fn call(socket: &Path, method: &str, params: Value) -> Result<Value, CallError> {
    let stream = UnixStream::connect(socket).map_err(|e| {
        CallError::Unreachable(format!(
            "no daemon answers on {} ({e}); start one with `pacific lab up` or `pacific daemon`",
            socket.display()
        ))
    })?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(300)));
    let mut writer = stream
        .try_clone()
        .map_err(|e| CallError::Unreachable(e.to_string()))?;
    let request = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    writeln!(writer, "{request}").map_err(|e| CallError::Unreachable(e.to_string()))?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .map_err(|e| CallError::Protocol(e.to_string()))?;
    let response: Value =
        serde_json::from_str(&line).map_err(|e| CallError::Protocol(format!("{e}: {line:?}")))?;
    if let Some(error) = response.get("error") {
        return Err(CallError::Rpc {
            code: error.get("code").and_then(Value::as_i64).unwrap_or(0),
            message: error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("unknown error")
                .to_string(),
            data: error.get("data").cloned(),
        });
    }
    response
        .get("result")
        .cloned()
        .ok_or_else(|| CallError::Protocol("no result".to_string()))
}

/// True when a daemon answers on `socket`.
pub fn daemon_answers(socket: &Path) -> bool {
    call(socket, "daemon.status", json!({})).is_ok()
}
