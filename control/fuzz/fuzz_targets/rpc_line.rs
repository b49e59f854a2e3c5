//! One control-socket line from arbitrary bytes, through the JSON-RPC framing with a dispatcher
//! that echoes. What must hold: no panic; every answer (when there is one) is a JSON-RPC 2.0
//! response object with either a result or an error with a code and a message, or for a batch
//! a non-empty array of them.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pacific_control::rpc::{handle_line, RpcError};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let line = String::from_utf8_lossy(data);
    let answer = handle_line(&line, |method, params| {
        if method == "fail" {
            Err(RpcError::invalid_params("x", "refused"))
        } else {
            Ok(params.clone())
        }
    });
    if let Some(answer) = answer {
        let v: Value = serde_json::from_str(&answer).expect("answers are JSON");
        // A batch is answered with a non-empty array of responses.
        let responses = match &v {
            Value::Array(all) => {
                assert!(!all.is_empty(), "an empty batch answer: {answer}");
                all.iter().collect()
            }
            one => vec![one],
        };
        for r in responses {
            assert_eq!(r["jsonrpc"], "2.0");
            let ok = r.get("result").is_some();
            let err = r["error"]["code"].is_i64() && r["error"]["message"].is_string();
            assert!(ok != err, "exactly one of result and error: {answer}");
        }
    }
});
