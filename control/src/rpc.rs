//! JSON-RPC 2.0 framing for the control socket: one request or response per line.
//!
//! Every error is a JSON-RPC error object with a code, a message a person can act on, and in
//! `data` the field at fault (and, for manifests, the document, kind and name), so that scripts
//! can point at the exact spot. A malformed line never closes the connection.

use serde::de::{
    DeserializeOwned, DeserializeSeed, Deserializer, Error as _, MapAccess, SeqAccess, Visitor,
};
use serde_json::{json, Map, Value};

use crate::model::manifest::{closest, ManifestError};
use crate::model::store::{ApplyError, ErrorCode};

/// JSON-RPC's reserved codes (section 5.1) and ours (-32000 and below).
pub mod code {
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const METHOD_NOT_FOUND: i64 = -32601;
    pub const INVALID_PARAMS: i64 = -32602;
    /// A manifest or request that fails validation.
    pub const INVALID: i64 = -32000;
    /// It conflicts with what exists (an address in use...).
    pub const CONFLICT: i64 = -32001;
    pub const NOT_FOUND: i64 = -32002;
    /// A pool has nothing left.
    pub const EXHAUSTED: i64 = -32003;
    pub const BUSY: i64 = -32004;
}

#[derive(Debug, Clone, PartialEq)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
    pub data: Option<Value>,
}

impl RpcError {
    pub fn new(code: i64, message: impl Into<String>) -> RpcError {
        RpcError {
            code,
            message: message.into(),
            data: None,
        }
    }

    fn with_field(code: i64, field: &str, message: impl Into<String>) -> RpcError {
        let message = message.into();
        RpcError {
            code,
            message: format!("{field}: {message}"),
            data: Some(json!({ "field": field })),
        }
    }

    pub fn invalid_request(message: impl Into<String>) -> RpcError {
        Self::new(code::INVALID_REQUEST, message)
    }

    pub fn invalid_params(field: &str, message: impl Into<String>) -> RpcError {
        Self::with_field(code::INVALID_PARAMS, &format!("params.{field}"), message)
    }

    pub fn not_found(field: &str, message: impl Into<String>) -> RpcError {
        Self::with_field(code::NOT_FOUND, &format!("params.{field}"), message)
    }

    pub fn server_busy() -> RpcError {
        Self::new(code::BUSY, "too many control connections; try again")
    }

    pub fn manifest(e: &ManifestError) -> RpcError {
        RpcError {
            code: code::INVALID,
            message: e.to_string(),
            data: Some(json!({
                "document": e.document,
                "kind": e.kind,
                "name": e.name,
                "field": e.field,
            })),
        }
    }

    pub fn apply(e: &ApplyError) -> RpcError {
        let code = match e.code {
            ErrorCode::Invalid => code::INVALID,
            ErrorCode::Conflict => code::CONFLICT,
            ErrorCode::NotFound => code::NOT_FOUND,
            ErrorCode::Exhausted => code::EXHAUSTED,
        };
        RpcError {
            code,
            message: e.to_string(),
            data: Some(json!({
                "document": e.document,
                "kind": e.kind,
                "name": e.name,
                "field": e.field,
            })),
        }
    }
}

pub fn error_response(id: &Value, e: &RpcError) -> String {
    error_value(id, e).to_string()
}

fn error_value(id: &Value, e: &RpcError) -> Value {
    let mut error = Map::new();
    error.insert("code".into(), json!(e.code));
    error.insert("message".into(), json!(e.message));
    if let Some(data) = &e.data {
        error.insert("data".into(), data.clone());
    }
    json!({"jsonrpc": "2.0", "id": id, "error": Value::Object(error)})
}

/// Parses JSON text as [`Value`] does, but refuses an object with a member twice
/// (`{"namespace": "a", "namespace": "b"}`), which `Value` would silently keep the last of:
/// `Err((path, error))`, `path` the member's (`params.namespace`, `[1].id` in a batch), empty
/// for a syntax error.
pub fn parse_strict(text: &str) -> Result<Value, (String, serde_json::Error)> {
    let duplicate = std::cell::RefCell::new(None);
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = Strict {
        path: String::new(),
        duplicate: &duplicate,
    }
    .deserialize(&mut de)
    .and_then(|v| de.end().map(|()| v));
    parsed.map_err(|e| (duplicate.take().unwrap_or_default(), e))
}

/// A [`Value`] deserializer that knows where it is, to name a duplicate member.
struct Strict<'a> {
    path: String,
    duplicate: &'a std::cell::RefCell<Option<String>>,
}

impl Strict<'_> {
    fn at(&self, step: String) -> Self {
        Strict {
            path: step,
            duplicate: self.duplicate,
        }
    }
}

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(v) =
            seq.next_element_seed(self.at(format!("{}[{}]", self.path, items.len())))?
        {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut obj = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = if self.path.is_empty() {
                key.clone()
            } else {
                format!("{}.{key}", self.path)
            };
            if obj.contains_key(&key) {
                let e = A::Error::custom(format!("{path}: member {key:?} given twice"));
                *self.duplicate.borrow_mut() = Some(path);
                return Err(e);
            }
            let value = map.next_value_seed(self.at(path))?;
            obj.insert(key, value);
        }
        Ok(Value::Object(obj))
    }
}

/// Handles one request line with `dispatch(method, params)`. `None` for a notification (a
/// request without `id`), which JSON-RPC answers with nothing. A line may also be a batch (a
/// JSON array of requests, JSON-RPC 2.0 section 6): its requests are handled in order and
/// answered with an array of the answers, none for its notifications (and nothing at all when
/// it holds only notifications); an empty batch is an invalid request.
pub fn handle_line(
    line: &str,
    mut dispatch: impl FnMut(&str, &Value) -> Result<Value, RpcError>,
) -> Option<String> {
    // The line's own end is no part of the request: a parse error counts lines and columns
    // within the request (`line 1 column 33`, not `line 2 column 0`).
    let text = line.trim_end_matches(['\n', '\r']);
    let request: Value = match parse_strict(text) {
        Ok(v) => v,
        Err((path, e)) if path.is_empty() => {
            return Some(error_response(
                &Value::Null,
                &RpcError::new(code::PARSE_ERROR, format!("parse error: {e}")),
            ))
        }
        // A member given twice is a request that says two things: refused whole, naming it
        // (and answered with the request's id, when that is not what was given twice).
        Err((path, e)) => {
            let id = serde_json::from_str::<Value>(text)
                .ok()
                .filter(|_| path != "id")
                .and_then(|v| v.get("id").cloned())
                .filter(|id| {
                    matches!(id, Value::Number(n) if n.is_i64() || n.is_u64()) || id.is_string()
                })
                .unwrap_or(Value::Null);
            let mut error = RpcError::new(code::INVALID_REQUEST, e.to_string());
            error.data = Some(json!({ "field": path }));
            return Some(error_response(&id, &error));
        }
    };
    match request {
        Value::Array(batch) if batch.is_empty() => Some(error_response(
            &Value::Null,
            &RpcError::invalid_request("an empty batch"),
        )),
        Value::Array(batch) => {
            let answers: Vec<Value> = batch
                .iter()
                .filter_map(|r| handle_request(r, &mut dispatch))
                .collect();
            (!answers.is_empty()).then(|| Value::Array(answers).to_string())
        }
        request => handle_request(&request, &mut dispatch).map(|a| a.to_string()),
    }
}

/// The members of a JSON-RPC 2.0 request object.
const MEMBERS: &[&str] = &["jsonrpc", "id", "method", "params"];

/// One request of a line or a batch: its answer, `None` for a notification.
fn handle_request(
    request: &Value,
    dispatch: &mut impl FnMut(&str, &Value) -> Result<Value, RpcError>,
) -> Option<Value> {
    let Value::Object(obj) = request else {
        return Some(error_value(
            &Value::Null,
            &RpcError::invalid_request("a request must be a JSON object"),
        ));
    };
    let mut id = obj.get("id").cloned();
    // `-0` is an integer in JSON's grammar, but serde_json reads it as the float -0.0: it is
    // the id 0 (which every client compares equal to it), not a fractional id to refuse.
    let negative_zero = |f: f64| f == 0.0 && f.is_sign_negative();
    if id
        .as_ref()
        .and_then(Value::as_f64)
        .is_some_and(negative_zero)
    {
        id = Some(Value::from(0));
    }
    let reply_id = id.clone().unwrap_or(Value::Null);
    if !matches!(reply_id, Value::Null | Value::Number(_) | Value::String(_)) {
        return Some(error_value(
            &Value::Null,
            &RpcError::with_field(
                code::INVALID_REQUEST,
                "id",
                "must be a number, a string or null",
            ),
        ));
    }
    // Past 64 bits serde_json holds a number as a float, and the answer would carry another id
    // than the request's (123456789012345678901234567890 came back as 1.2345678901234568e29).
    if let Value::Number(n) = &reply_id {
        if !n.is_i64() && !n.is_u64() {
            return Some(error_value(
                &Value::Null,
                &RpcError::with_field(
                    code::INVALID_REQUEST,
                    "id",
                    "a number must be an integer of at most 64 bits (send a larger id as a string)",
                ),
            ));
        }
    }
    if obj.get("jsonrpc") != Some(&json!("2.0")) {
        return Some(error_value(
            &reply_id,
            &RpcError::with_field(code::INVALID_REQUEST, "jsonrpc", "must be \"2.0\""),
        ));
    }
    // A request has these four members and no others (section 4): one it does not know is a
    // typo, most likely, and `"parms": {"namespace": "x"}` served as a request without
    // params listed every namespace.
    if let Some(member) = obj.keys().find(|k| !MEMBERS.contains(&k.as_str())) {
        let hint = closest(member, MEMBERS)
            .map(|m| format!("; did you mean {m:?}?"))
            .unwrap_or_default();
        return Some(error_value(
            &reply_id,
            &RpcError::with_field(
                code::INVALID_REQUEST,
                member,
                format!(
                    "unknown member of a request (a request has {}){hint}",
                    MEMBERS.join(", ")
                ),
            ),
        ));
    }
    let Some(method) = obj.get("method").and_then(Value::as_str) else {
        return Some(error_value(
            &reply_id,
            &RpcError::with_field(code::INVALID_REQUEST, "method", "missing or not a string"),
        ));
    };
    let params = obj
        .get("params")
        .cloned()
        .unwrap_or(Value::Object(Map::new()));
    if !params.is_object() {
        return Some(error_value(
            &reply_id,
            &RpcError::with_field(
                code::INVALID_PARAMS,
                "params",
                "must be an object (named parameters)",
            ),
        ));
    }
    let outcome = dispatch(method, &params);
    id.as_ref()?;
    Some(match outcome {
        Ok(result) => json!({"jsonrpc": "2.0", "id": reply_id, "result": result}),
        Err(e) => error_value(&reply_id, &e),
    })
}

/// Deserializes a method's params, naming the field at fault.
pub fn params<T: DeserializeOwned>(params: &Value) -> Result<T, RpcError> {
    serde_json::from_value(params.clone()).map_err(|e| {
        let text = e.to_string();
        // serde's messages quote the field in "unknown field `x`" and "missing field `y`"; a
        // wrong type ("invalid type: integer `5`, expected a string") quotes the value instead,
        // so that field is found by leaving each parameter out in turn.
        let quoted = ["unknown field", "missing field"]
            .iter()
            .any(|p| text.starts_with(p))
            .then(|| text.split('`').nth(1).map(str::to_string))
            .flatten();
        match quoted.or_else(|| ill_typed_param::<T>(params)) {
            Some(field) => RpcError::invalid_params(&field, text),
            None => RpcError::new(code::INVALID_PARAMS, format!("params: {text}")),
        }
    })
}

/// The parameter without which `params` deserializes, or only misses that parameter.
fn ill_typed_param<T: DeserializeOwned>(params: &Value) -> Option<String> {
    let obj = params.as_object()?;
    obj.keys()
        .find(|k| {
            let mut without = obj.clone();
            without.remove(k.as_str());
            match serde_json::from_value::<T>(Value::Object(without)) {
                Ok(_) => true,
                Err(e) => e.to_string() == format!("missing field `{k}`"),
            }
        })
        .cloned()
}

/// One required string-like parameter.
pub fn param<T: DeserializeOwned>(params: &Value, name: &str) -> Result<T, RpcError> {
    let value = params
        .get(name)
        .ok_or_else(|| RpcError::invalid_params(name, "missing"))?;
    serde_json::from_value(value.clone()).map_err(|e| RpcError::invalid_params(name, e.to_string()))
}

/// An optional parameter.
pub fn opt_param<T: DeserializeOwned>(params: &Value, name: &str) -> Result<Option<T>, RpcError> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v.clone())
            .map(Some)
            .map_err(|e| RpcError::invalid_params(name, e.to_string())),
    }
}

/// Rejects any parameter for methods that take none.
pub fn no_params(params: &Value) -> Result<(), RpcError> {
    match params.as_object().and_then(|o| o.keys().next()) {
        Some(k) => Err(RpcError::invalid_params(
            k,
            "this method takes no parameters",
        )),
        None => Ok(()),
    }
}

/// Rejects parameters outside `allowed`.
pub fn only_params(params: &Value, allowed: &[&str]) -> Result<(), RpcError> {
    if allowed.is_empty() {
        return no_params(params);
    }
    if let Some(obj) = params.as_object() {
        for k in obj.keys() {
            if !allowed.contains(&k.as_str()) {
                return Err(RpcError::invalid_params(
                    k,
                    format!(
                        "unknown parameter (expected one of: {})",
                        allowed.join(", ")
                    ),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo(method: &str, params: &Value) -> Result<Value, RpcError> {
        match method {
            "echo" => Ok(params.clone()),
            _ => Err(RpcError::new(
                code::METHOD_NOT_FOUND,
                format!("no method {method:?}"),
            )),
        }
    }

    fn parse(s: &str) -> Value {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn a_good_request_gets_its_result_with_its_id() {
        let out = handle_line(
            r#"{"jsonrpc":"2.0","id":7,"method":"echo","params":{"a":1}}"#,
            echo,
        )
        .unwrap();
        assert_eq!(
            parse(&out),
            json!({"jsonrpc":"2.0","id":7,"result":{"a":1}})
        );
    }

    #[test]
    fn ids_come_back_exactly_or_are_refused() {
        for id in [
            "-9223372036854775808",
            "18446744073709551615",
            "\"123456789012345678901234567890\"",
        ] {
            let line = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"echo"}}"#);
            let out = handle_line(&line, echo).unwrap();
            assert!(out.contains(&format!("\"id\":{id}")), "{out}");
        }
        for id in ["123456789012345678901234567890", "1.5", "1e3", "0.0"] {
            let line = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"echo"}}"#);
            let out = parse(&handle_line(&line, echo).unwrap());
            assert_eq!(out["error"]["code"], json!(code::INVALID_REQUEST), "{id}");
            assert_eq!(out["error"]["data"]["field"], json!("id"), "{id}");
            assert_eq!(out["id"], Value::Null);
        }
    }

    /// `-0` is an integer in JSON's grammar (serde_json reads it as the float -0.0): it is
    /// answered, with id 0, not refused as "must be an integer".
    #[test]
    fn a_negative_zero_id_is_answered_as_zero() {
        let out =
            parse(&handle_line(r#"{"jsonrpc":"2.0","id":-0,"method":"echo"}"#, echo).unwrap());
        assert_eq!(out["id"], json!(0), "{out}");
        assert!(out.get("error").is_none(), "{out}");
    }

    #[test]
    fn malformed_lines_get_errors_naming_the_problem() {
        // A request cut short, its line end included: the error points into the request.
        let out =
            parse(&handle_line("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\r\n", echo).unwrap());
        let message = out["error"]["message"].as_str().unwrap();
        assert!(message.contains("at line 1 column 33"), "{message}");
        let out = parse(&handle_line("{not json", echo).unwrap());
        assert_eq!(out["error"]["code"], json!(code::PARSE_ERROR));
        let out = parse(&handle_line(r#"{"jsonrpc":"1.0","id":1,"method":"echo"}"#, echo).unwrap());
        assert_eq!(out["error"]["code"], json!(code::INVALID_REQUEST));
        assert_eq!(out["error"]["data"]["field"], json!("jsonrpc"));
        let out = parse(
            &handle_line(
                r#"{"jsonrpc":"2.0","id":1,"method":"echo","params":[1]}"#,
                echo,
            )
            .unwrap(),
        );
        assert_eq!(out["error"]["data"]["field"], json!("params"));
        let out =
            parse(&handle_line(r#"{"jsonrpc":"2.0","id":"x","method":"nope"}"#, echo).unwrap());
        assert_eq!(out["error"]["code"], json!(code::METHOD_NOT_FOUND));
        assert_eq!(out["id"], json!("x"));
    }

    #[test]
    fn methods_without_parameters_say_so() {
        let e = only_params(&json!({"x": 1}), &[]).unwrap_err();
        assert_eq!(e.data.unwrap()["field"], json!("params.x"));
        assert!(e.message.contains("takes no parameters"), "{}", e.message);
    }

    /// JSON-RPC 2.0 section 6: a batch is answered with an array, in order, without the
    /// notifications' answers; a batch of notifications with nothing; an empty one is invalid.
    #[test]
    fn a_batch_is_answered_with_an_array() {
        let out = parse(
            &handle_line(
                r#"[{"jsonrpc":"2.0","id":1,"method":"echo","params":{"a":1}},
                    {"jsonrpc":"2.0","method":"echo"},
                    {"jsonrpc":"2.0","id":"b","method":"nope"},
                    5]"#,
                echo,
            )
            .unwrap(),
        );
        let answers = out.as_array().expect("an array");
        assert_eq!(answers.len(), 3, "{out}");
        assert_eq!(answers[0], json!({"jsonrpc":"2.0","id":1,"result":{"a":1}}));
        assert_eq!(
            (
                answers[1]["id"].clone(),
                answers[1]["error"]["code"].clone()
            ),
            (json!("b"), json!(code::METHOD_NOT_FOUND))
        );
        assert_eq!(
            (
                answers[2]["id"].clone(),
                answers[2]["error"]["code"].clone()
            ),
            (Value::Null, json!(code::INVALID_REQUEST))
        );
        assert_eq!(
            handle_line(r#"[{"jsonrpc":"2.0","method":"echo"}]"#, echo),
            None
        );
        let out = parse(&handle_line("[]", echo).unwrap());
        assert_eq!(out["error"]["code"], json!(code::INVALID_REQUEST));
    }

    /// `"parms"` for `"params"` was served as a request without params: `pods.list` listed every
    /// namespace's pods, not the one asked for. A member a request does not have is refused,
    /// naming it and the one it likely mistypes, and the method is not called.
    #[test]
    fn an_unknown_member_of_a_request_is_refused_and_not_dispatched() {
        let mut calls = 0;
        let mut counting = |m: &str, p: &Value| {
            calls += 1;
            echo(m, p)
        };
        let line = r#"{"jsonrpc":"2.0","id":3,"method":"echo","parms":{"namespace":"x"}}"#;
        let out = parse(&handle_line(line, &mut counting).unwrap());
        assert_eq!(out["id"], json!(3), "{out}");
        assert_eq!(out["error"]["code"], json!(code::INVALID_REQUEST), "{out}");
        assert_eq!(out["error"]["data"]["field"], json!("parms"), "{out}");
        let message = out["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("did you mean \"params\""), "{message}");
        // In a batch, and as a notification, too: refused, never run.
        let line = r#"[{"jsonrpc":"2.0","method":"echo","namespace":"x"},
                       {"jsonrpc":"2.0","id":4,"method":"echo","params":{}}]"#;
        let out = parse(&handle_line(line, &mut counting).unwrap());
        assert_eq!(
            out[0]["error"]["data"]["field"],
            json!("namespace"),
            "{out}"
        );
        assert_eq!(out[1]["result"], json!({}), "{out}");
        assert_eq!(calls, 1);
    }

    /// `"namespace"` twice in params was served with the last one, `"id"` twice answered with the
    /// last: a request that says two things is refused whole, naming the member, and not run.
    #[test]
    fn a_member_given_twice_is_refused_and_not_dispatched() {
        let mut calls = 0;
        let mut counting = |m: &str, p: &Value| {
            calls += 1;
            echo(m, p)
        };
        for (line, field, id) in [
            (
                r#"{"jsonrpc":"2.0","id":5,"method":"echo","params":{"namespace":"a","namespace":"b"}}"#,
                "params.namespace",
                json!(5),
            ),
            (
                r#"{"jsonrpc":"2.0","id":5,"method":"echo","id":6}"#,
                "id",
                Value::Null,
            ),
            (
                r#"{"jsonrpc":"2.0","id":"m","method":"echo","method":"nope"}"#,
                "method",
                json!("m"),
            ),
            (
                r#"[{"jsonrpc":"2.0","id":1,"method":"echo"},{"jsonrpc":"2.0","id":2,"method":"echo","params":{"a":{"b":1,"b":2}}}]"#,
                "[1].params.a.b",
                Value::Null,
            ),
        ] {
            let out = parse(&handle_line(line, &mut counting).unwrap());
            assert_eq!(out["error"]["code"], json!(code::INVALID_REQUEST), "{out}");
            assert_eq!(out["error"]["data"]["field"], json!(field), "{out}");
            assert_eq!(out["id"], id, "{out}");
        }
        // The same member in two objects is no duplicate; numbers and ids come back as before.
        let line = r#"{"jsonrpc":"2.0","id":18446744073709551615,"method":"echo","params":{"a":{"x":1.5},"b":{"x":-1}}}"#;
        let out = parse(&handle_line(line, &mut counting).unwrap());
        assert_eq!(
            out,
            json!({"jsonrpc":"2.0","id":18446744073709551615u64,"result":{"a":{"x":1.5},"b":{"x":-1}}})
        );
        assert_eq!(calls, 1, "only the request without a member twice was run");
    }

    #[test]
    fn notifications_get_no_answer() {
        assert_eq!(
            handle_line(r#"{"jsonrpc":"2.0","method":"echo"}"#, echo),
            None
        );
    }

    #[test]
    fn typed_params_name_the_field_at_fault() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct P {
            manifest: String,
            namespace: Option<String>,
        }
        let e = params::<P>(&json!({"manifest": "x", "colour": 1})).unwrap_err();
        assert_eq!(e.data.unwrap()["field"], json!("params.colour"));
        let e = params::<P>(&json!({})).unwrap_err();
        assert_eq!(e.data.unwrap()["field"], json!("params.manifest"));
        // A wrong type names the parameter, not the value serde quotes.
        let e = params::<P>(&json!({"manifest": 5})).unwrap_err();
        assert_eq!(
            e.message,
            "params.manifest: invalid type: integer `5`, expected a string"
        );
        assert_eq!(e.data.unwrap()["field"], json!("params.manifest"));
        let e = params::<P>(&json!({"manifest": "x", "namespace": ["a"]})).unwrap_err();
        assert_eq!(e.data.unwrap()["field"], json!("params.namespace"));
    }
}
