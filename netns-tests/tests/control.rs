//! The control plane as a user meets it: rejected manifests change nothing and say where they
//! are wrong; the raw socket answers JSON-RPC errors with the right codes and stays usable; one
//! client's bad request does not disturb another.

use pacific_netns_tests::*;
use serde_json::{json, Value};

/// The state a user can see, for before/after comparisons.
fn visible_state(lab: &Lab) -> (Value, Value, Value) {
    (
        lab.get_json("pods", None),
        lab.get_json("namespaces", None),
        lab.get_json("svc", None),
    )
}

#[test]
fn bad_yaml_is_rejected_and_changes_nothing() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up("cyaml");
    let before = visible_state(&lab);
    // The table as a user reads it, less the AGE column, which ticks on its own.
    let pods_table = |lab: &Lab| -> Vec<Vec<String>> {
        stdout(&lab.pacific(&["get", "pods"]))
            .lines()
            .map(|l| {
                let mut cells: Vec<String> = l.split_whitespace().map(str::to_string).collect();
                if cells.len() > 5 {
                    cells.remove(5);
                }
                cells
            })
            .collect()
    };
    let pods_text = pods_table(&lab);
    let bad = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: [ns-broken\n";
    let out = lab.apply(bad, None, None);
    assert_eq!(
        out.status.code(),
        Some(1),
        "bad YAML must exit 1:\n{}",
        describe(&out)
    );
    let err = stderr(&out);
    assert!(
        err.contains("error:") && err.contains("document 1"),
        "the error should name document 1:\n{err}"
    );
    assert_eq!(
        visible_state(&lab),
        before,
        "a rejected apply changed the state"
    );
    assert_eq!(
        pods_table(&lab),
        pods_text,
        "`get pods` differs after a rejected apply"
    );
}

const HALF_VALID: &str = r#"apiVersion: v1
kind: Namespace
metadata:
  name: ns-half
---
apiVersion: v1
kind: Service
metadata:
  name: broken
  namespace: ns-half
spec:
  ports:
  - port: 70000
    targetPort: 80
  selector:
    app: broken
"#;

#[test]
fn a_bad_second_document_rejects_the_whole_request() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up("chalf");
    let before = visible_state(&lab);
    let out = lab.apply(HALF_VALID, None, None);
    assert_eq!(
        out.status.code(),
        Some(1),
        "port 70000 must be rejected:\n{}",
        describe(&out)
    );
    let err = stderr(&out);
    assert!(
        err.contains("spec.ports[0].port"),
        "the error should name spec.ports[0].port:\n{err}"
    );
    assert!(
        err.contains("document 2"),
        "the error should name document 2:\n{err}"
    );
    let namespaces = lab.items("namespaces", None);
    assert!(
        !namespaces
            .iter()
            .any(|n| n["name"].as_str() == Some("ns-half")),
        "the first document's namespace must not exist after a rejected request: {namespaces:?}"
    );
    assert_eq!(
        visible_state(&lab),
        before,
        "a rejected apply changed the state"
    );

    // The same through the socket: a JSON-RPC error whose data points at the document and field.
    let mut conn = lab.connect();
    let resp = conn.call("apply", json!({ "manifest": HALF_VALID }));
    let error = &resp["error"];
    assert_eq!(
        error["code"],
        json!(-32000),
        "invalid manifest code: {resp}"
    );
    assert_eq!(
        error["data"]["field"],
        json!("spec.ports[0].port"),
        "{resp}"
    );
    assert_eq!(error["data"]["document"], json!(2), "{resp}");
    assert!(resp.get("result").is_none(), "{resp}");
}

#[test]
fn raw_socket_errors_carry_the_right_codes() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up("craw");
    let mut conn = lab.connect();

    let resp = conn.roundtrip_raw("{\"jsonrpc\": \"2.0\", \"id\": 1, \"method\": ");
    assert_eq!(
        resp["error"]["code"],
        json!(-32700),
        "malformed JSON: {resp}"
    );
    assert_eq!(resp["jsonrpc"], json!("2.0"), "{resp}");
    assert_eq!(
        resp["id"],
        Value::Null,
        "a parse error's id is null (JSON-RPC 2.0, section 5): {resp}"
    );

    // The same connection still works.
    let resp = conn.call("daemon.status", json!({}));
    assert!(
        resp["result"]["pid"].is_u64(),
        "the connection should stay usable after a parse error: {resp}"
    );

    let resp = conn.call("no.such.method", json!({}));
    assert_eq!(
        resp["error"]["code"],
        json!(-32601),
        "unknown method: {resp}"
    );

    let resp = conn.call("pods.list", json!({ "namespace": 5 }));
    assert_eq!(resp["error"]["code"], json!(-32602), "bad params: {resp}");
    let field = resp["error"]["data"]["field"].as_str().unwrap_or_default();
    assert!(
        field.ends_with("namespace"),
        "bad params should name the field `namespace`: {resp}"
    );

    let resp = conn.call("pods.list", json!({ "namespace": "ns-dev" }));
    let pods = resp["result"]["items"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        pods.iter().any(|p| p["ip"] == json!("172.211.0.18")),
        "pods.list after the errors: {resp}"
    );

    // The CLI's raw call reports the same error and exits 1.
    let out = lab.rpc("no.such.method", &json!({}));
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(stderr(&out).starts_with("error:"), "{}", describe(&out));
}

#[test]
fn a_second_client_keeps_working_during_a_bad_request() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up("ctwo");
    let mut bad = lab.connect();
    let mut good = lab.connect();
    // Half a request, no newline yet: the daemon is waiting on this client.
    bad.send_raw("{\"jsonrpc\": \"2.0\", \"id\": 7, \"meth");
    let resp = good.call("pods.list", json!({ "namespace": "ns-dev" }));
    assert!(
        resp["result"]["items"].is_array(),
        "the second client got no answer while the first was mid-request: {resp}"
    );
    // The first finishes with garbage; the second keeps working.
    bad.send_raw("od\": oops}\n");
    let resp = bad.read_response();
    assert_eq!(resp["error"]["code"], json!(-32700), "{resp}");
    let resp = good.call("daemon.status", json!({}));
    assert!(resp["result"]["pid"].is_u64(), "{resp}");
    let resp = good.call("apply", json!({ "manifest": "kind: [" }));
    assert_eq!(
        resp["error"]["code"],
        json!(-32000),
        "a bad manifest is an invalid-manifest error: {resp}"
    );
    let resp = bad.call("daemon.status", json!({}));
    assert!(
        resp["result"]["pid"].is_u64(),
        "the first client's connection stays usable: {resp}"
    );
    // And the CLI, a third client, too.
    let out = lab.pacific(&["get", "pods", "-n", "ns-dev"]);
    assert!(out.status.success(), "{}", describe(&out));
}

/// 256 connections that sent nothing (the limit) locked every other client out until their
/// idle timeout, two minutes: `pacific get` was answered `server busy`. A new connection beyond
/// the limit now closes the one idle longest; a client that has just been answered keeps its.
#[test]
fn idle_connections_at_the_limit_do_not_lock_the_cli_out() {
    use std::io::Read;
    if !require_netns() {
        return;
    }
    let lab = Lab::up_with("cflood", SMALL_LAB);
    // With `keep`, the 256 the daemon serves at most.
    let mut keep = lab.connect();
    let flood: Vec<std::os::unix::net::UnixStream> = (0..255)
        .map(|_| std::os::unix::net::UnixStream::connect(&lab.socket).expect("connect"))
        .collect();
    // Answered after the flood came, it is not the one idle longest.
    let resp = keep.call("daemon.status", json!({}));
    assert!(resp["result"]["pid"].is_u64(), "{resp}");
    for _ in 0..3 {
        let out = lab.pacific(&["get", "pods", "-n", "qa-a"]);
        assert!(out.status.success(), "{}", describe(&out));
        assert!(stdout(&out).contains("web"), "{}", describe(&out));
    }
    // The oldest silent connections were closed to make room (EOF, not a timeout).
    let mut first = &flood[0];
    first
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .expect("set a read timeout");
    let mut buf = [0u8; 64];
    assert!(
        matches!(first.read(&mut buf), Ok(0)),
        "the connection idle longest is still open"
    );
    let resp = keep.call("daemon.status", json!({}));
    assert!(
        resp["result"]["pid"].is_u64(),
        "a client answered since is closed: {resp}"
    );
    drop(flood);
}

/// A lab of one namespace and one pod, for CLI checks that need no traffic.
const SMALL_LAB: &str = "\
apiVersion: v1
kind: Namespace
metadata:
  name: qa-a
---
apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: qa-a
spec:
  containers:
  - name: web
    image: x
";

/// `get KIND NAME` of a missing object fails in every output format, as kubectl's does: a
/// script that asks for JSON must not read an empty list as success. `-o yaml` is there, as in
/// kubectl, for every kind.
#[test]
fn get_of_a_missing_object_fails_in_every_format() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up_with("cmiss", SMALL_LAB);
    // A lab of no outside hosts says so in its summary, rather than an empty heading.
    let summary = stdout(&lab.up_output);
    assert!(
        summary.contains("No outside hosts (the upstream router is ")
            && !summary.contains("Outside hosts ("),
        "{summary}"
    );
    for format in [None, Some("wide"), Some("json"), Some("yaml")] {
        let mut args = vec!["get", "pods", "-n", "qa-a", "nosuch"];
        args.extend(format.iter().flat_map(|f| ["-o", f]));
        let out = lab.pacific(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", describe(&out));
        assert!(
            stderr(&out).contains("\"nosuch\" not found") && stdout(&out).is_empty(),
            "{args:?}: {}",
            describe(&out)
        );
        args[4] = "web";
        let out = lab.pacific(&args);
        assert!(
            out.status.success() && stdout(&out).contains("web"),
            "{args:?}: {}",
            describe(&out)
        );
    }
    // One object by name is printed alone, as kubectl prints it; two are a list.
    for args in [
        &["get", "pods", "-n", "qa-a", "web", "-o", "yaml"][..],
        &["get", "pod/web", "-o", "yaml", "-n", "qa-a"],
    ] {
        let out = lab.pacific(args);
        assert!(
            out.status.success()
                && stdout(&out).lines().any(|l| l == "name: web")
                && !stdout(&out).contains("items:"),
            "{args:?}: {}",
            describe(&out)
        );
    }
    let out = lab.pacific(&["get", "pods", "-n", "qa-a", "web", "web", "-o", "json"]);
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(
        listed["items"].as_array().map(Vec::len),
        Some(2),
        "{}",
        describe(&out)
    );
    for kind in [
        "namespaces",
        "pods",
        "segments",
        "routes",
        "ports",
        "svc",
        "dfw",
        "nat",
        "outside",
        "deployments",
        "tkc",
    ] {
        let out = lab.pacific(&["get", kind, "-o", "yaml"]);
        assert!(
            out.status.success(),
            "get {kind} -o yaml: {}",
            describe(&out)
        );
    }
}

/// A second `pacific daemon` on a socket a daemon answers on is refused before it touches
/// anything: the running daemon's lab record (its pid, which `lab down` and a restart go by)
/// and its upstream router stay as they were.
#[test]
fn a_second_daemon_on_the_same_socket_changes_nothing() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up_with("c2nd", SMALL_LAB);
    let record_path = lab.dir.join("pacific.lab.json");
    let record = std::fs::read_to_string(&record_path).unwrap_or_default();
    let pid = lab.rpc_ok("daemon.status", &json!({}))["pid"].clone();
    let socket = lab.socket.display().to_string();
    let mut cmd = std::process::Command::new(pacific_bin());
    cmd.args(["--socket", &socket, "daemon", "--prefix", &lab.prefix]);
    let out = run_bounded(cmd, None, std::time::Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stderr(&out).contains("another daemon already answers on"),
        "{}",
        describe(&out)
    );
    assert_eq!(
        std::fs::read_to_string(&record_path).unwrap_or_default(),
        record,
        "the refused daemon rewrote the lab record"
    );
    assert_eq!(lab.rpc_ok("daemon.status", &json!({}))["pid"], pid);
    let links = lab.ip_in(&lab.upstream_netns(), &["-o", "link", "show", "uplink"]);
    assert!(links.status.success(), "{}", describe(&links));
}

/// `lab up --prefix X` and `lab down --prefix X` against a socket whose lab has another prefix
/// (the user forgot `--socket`) do nothing and say so, instead of applying to that lab or
/// stopping its daemon.
#[test]
fn lab_commands_with_another_labs_prefix_do_nothing() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up_with("cpfx", SMALL_LAB);
    let pid = lab.rpc_ok("daemon.status", &json!({}))["pid"].clone();
    let before = visible_state(&lab);
    let other = format!("{}x", lab.prefix);
    let file = lab.dir.join("other.yaml");
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: qa-other}\n",
    )
    .expect("write other.yaml");
    let file = file.display().to_string();
    for args in [
        vec!["lab", "up", &file, "--prefix", &other],
        vec!["lab", "down", "--prefix", &other],
    ] {
        let out = lab.pacific(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", describe(&out));
        assert!(
            stderr(&out).contains(&format!("has the prefix {}, not {other}", lab.prefix)),
            "{args:?}: {}",
            describe(&out)
        );
        assert_eq!(lab.rpc_ok("daemon.status", &json!({}))["pid"], pid);
        assert_eq!(visible_state(&lab), before, "{args:?} changed the lab");
    }
}

/// A request with a member JSON-RPC's request has not (`"parms"`, or `namespace` beside
/// `params`), or with a member given twice, was run as if that member were not there, or with
/// the last of the two: `"parms": {"namespace": "ns-prod"}` listed every namespace's pods, and
/// an apply with two manifests applied the second. Both are refused whole, naming the member,
/// and change nothing; the connection and `pacific rpc` say the same.
#[test]
fn unknown_and_repeated_request_members_are_refused_and_change_nothing() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up("cmemb");
    let mut conn = lab.connect();
    let ns = |name: &str| format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}}}\n");
    let manifest = |name: &str| serde_json::to_string(&ns(name)).unwrap_or_default();
    let cases = [
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"pods.list","parms":{"namespace":"ns-prod"}}"#
                .to_string(),
            "parms",
            json!(1),
        ),
        (
            format!(
                r#"{{"jsonrpc":"2.0","id":2,"method":"apply","params":{{"manifest":{}}},"namespace":"ns-dev"}}"#,
                manifest("memba")
            ),
            "namespace",
            json!(2),
        ),
        (
            format!(
                r#"{{"jsonrpc":"2.0","id":3,"method":"apply","params":{{"manifest":{},"manifest":{}}}}}"#,
                manifest("membb"),
                manifest("membc")
            ),
            "params.manifest",
            json!(3),
        ),
    ];
    for (line, field, id) in cases {
        let resp = conn.roundtrip_raw(&line);
        assert_eq!(
            (
                resp["id"].clone(),
                resp["error"]["code"].clone(),
                resp["error"]["data"]["field"].clone()
            ),
            (id, json!(-32600), json!(field)),
            "{line}: {resp}"
        );
    }
    let names: Vec<Value> = lab
        .items("namespaces", None)
        .iter()
        .map(|n| n["name"].clone())
        .collect();
    for name in ["memba", "membb", "membc"] {
        assert!(
            !names.contains(&json!(name)),
            "{name} was applied: {names:?}"
        );
    }
    // The same connection still serves.
    let resp = conn.call("pods.list", json!({"namespace": "ns-prod"}));
    assert!(resp["result"]["items"].is_array(), "{resp}");
    // `pacific rpc` refuses a parameter given twice rather than sending one of them.
    let out = lab.pacific(&[
        "rpc",
        "pods.list",
        r#"{"namespace":"ns-dev","namespace":"nope"}"#,
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stderr(&out).contains("params.namespace: member \"namespace\" given twice"),
        "{}",
        describe(&out)
    );
}

/// An apply that changes nothing leaves `daemon.status`'s generation where it was (kubectl's
/// metadata.generation does not move on a no-op apply either); one that changes something
/// moves it.
#[test]
fn an_unchanged_apply_keeps_the_generation() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up("qa35gen");
    let ns = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: gen-a\n";
    let generation = |lab: &Lab| lab.rpc_ok("daemon.status", &json!({}))["generation"].clone();
    lab.apply_ok(ns, None, None);
    let before = generation(&lab);
    let out = lab.apply_ok(ns, None, None);
    assert!(stdout(&out).contains("unchanged"), "{}", describe(&out));
    assert_eq!(
        generation(&lab),
        before,
        "an unchanged apply moved the generation"
    );
    let out = lab.apply_ok(&format!("{ns}  labels: {{a: b}}\n"), None, None);
    assert!(stdout(&out).contains("configured"), "{}", describe(&out));
    assert_ne!(generation(&lab), before, "a change left the generation");
}

/// `-n ''` is refused naming --namespace, not answered "No resources found in  namespace."; an
/// empty namespace or cluster in apply's params is blamed on params.namespace (params.cluster),
/// not on the manifest's metadata.namespace (or its kind).
#[test]
fn an_empty_namespace_is_refused_naming_it() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up("qa35ens");
    let out = lab.pacific(&["get", "pods", "-n", ""]);
    assert_ne!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        stderr(&out).contains("a value is required for '--namespace"),
        "{}",
        describe(&out)
    );
    assert!(!stdout(&out).contains("No resources"), "{}", describe(&out));
    let svc = "apiVersion: v1\nkind: Service\nmetadata:\n  name: x\nspec:\n  ports: [{port: 80}]\n";
    for member in ["namespace", "cluster"] {
        let out = lab.rpc(
            "apply",
            &json!({"manifest": svc, "namespace": "ns-dev", member: ""}),
        );
        let err = stderr(&out) + &stdout(&out);
        assert!(
            err.contains(&format!("params.{member}")) && err.contains("must not be empty"),
            "{member}: {}",
            describe(&out)
        );
    }
}
