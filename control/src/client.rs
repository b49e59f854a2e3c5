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
    /// The daemon closed the connection, or kept silent, instead of answering.
    NoAnswer(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Unreachable(m) => write!(f, "{m}"),
            CallError::Rpc { message, .. } => write!(f, "{message}"),
            CallError::Protocol(m) => write!(f, "bad answer from the daemon: {m}"),
            CallError::NoAnswer(m) => write!(f, "{m}"),
        }
    }
}

/// How long a call waits for its answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(300);

/// Calls `method` with `params` on the daemon at `socket`.
pub fn call(socket: &Path, method: &str, params: Value) -> Result<Value, CallError> {
    call_within(socket, method, params, ANSWER_TIMEOUT)
}

/// [`call`], waiting at most `timeout` for the answer.
pub fn call_within(
    socket: &Path,
    method: &str,
    params: Value,
    timeout: Duration,
) -> Result<Value, CallError> {
    let stream = UnixStream::connect(socket).map_err(|e| {
        CallError::Unreachable(format!(
            "no daemon answers on {} ({e}); start one with `pacific lab up` or `pacific daemon`",
            socket.display()
        ))
    })?;
    let _ = stream.set_read_timeout(Some(timeout));
    let mut writer = stream
        .try_clone()
        .map_err(|e| CallError::Unreachable(e.to_string()))?;
    let request = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    writeln!(writer, "{request}").map_err(|e| CallError::Unreachable(e.to_string()))?;
    let mut line = String::new();
    // A daemon that stops or dies mid-request closes the connection: that read as `bad answer
    // from the daemon: EOF while parsing a value at line 1 column 0: ""`.
    let read = BufReader::new(stream).read_line(&mut line).map_err(|e| {
        if matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            CallError::NoAnswer(format!(
                "the daemon on {} did not answer {method} within {} s",
                socket.display(),
                timeout.as_secs()
            ))
        } else {
            CallError::Protocol(e.to_string())
        }
    })?;
    if read == 0 {
        return Err(CallError::NoAnswer(format!(
            "the daemon on {} closed the connection before it answered {method} (it stopped \
             or died: its log says why; what the request asked may be done in part)",
            socket.display()
        )));
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A daemon that reads the request and closes the connection (it was stopped, or died, in
    /// the middle): the caller is told so, not handed a JSON parser's complaint about "".
    #[test]
    fn a_daemon_that_closes_without_answering_is_reported_as_such() {
        let dir = std::env::temp_dir().join(format!("pacific-client-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a directory for the socket");
        let socket = dir.join("pacific.sock");
        let listener = UnixListener::bind(&socket).expect("bind");
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            let mut line = String::new();
            let _ = BufReader::new(stream).read_line(&mut line);
        });
        let err = call(&socket, "apply", json!({})).expect_err("no answer came");
        let _ = server.join();
        let _ = std::fs::remove_dir_all(&dir);
        let message = err.to_string();
        assert!(
            message.contains("closed the connection before it answered apply"),
            "{message}"
        );
    }
}
