//! The CLI as a kubectl user meets it with manifests of their own: `-f DIR` and repeated `-f`,
//! errors that name the object as kubectl does, and a pod that could not be built reported as
//! such. Each test failed before its fix (found by exploratory QA).
//!
//! Address plan: pods 198.18.0.0/16, services 198.19.0.0/24, ingress 198.19.1.0/24, egress
//! 198.19.2.0/24 (RFC 2544); the T0 uplink 203.0.113.0/24.

use pacific_netns_tests::*;

const LAB: &str = "\
apiVersion: pacific.dev/v1
kind: Pools
metadata: {name: default}
spec: {pods: 198.18.0.0/16, services: 198.19.0.0/24, ingress: 198.19.1.0/24, egress: 198.19.2.0/24}
---
apiVersion: pacific.dev/v1
kind: Uplink
metadata: {name: default}
spec: {t0Address: 203.0.113.2, peerAddress: 203.0.113.1, prefixLength: 24}
---
apiVersion: v1
kind: Namespace
metadata: {name: payments}
";

fn pod(name: &str, ns: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{app: {name}}}}}\nspec: {{containers: [{{name: c, image: busybox}}]}}\n"
    )
}

fn pod_names(lab: &Lab, ns: &str) -> Vec<String> {
    lab.items("pods", Some(ns))
        .iter()
        .map(|p| p["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// `apply -f DIR` was refused (`cannot read DIR: Is a directory`) and a second `-f` was a usage
/// error: a directory applies its .yaml, .yml and .json files in name order (nothing else in
/// it), several `-f` apply together, an error names the file and its document, and `delete -f`
/// takes the same.
#[test]
fn apply_and_delete_take_directories_and_several_files() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up_with("khdir", LAB);
    let dir = lab.dir.join("app");
    std::fs::create_dir_all(dir.join("later")).unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.join(name), text).unwrap();
    write(
        "10-namespace.yml",
        "# the team's namespace\napiVersion: v1\nkind: Namespace\nmetadata: {name: ledger}\n---\n",
    );
    write(
        "20-pods.yaml",
        &format!("---\n{}---\n# trailing\n", pod("tool", "ledger")),
    );
    write(
        "30-service.json",
        r#"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "tool", "namespace": "ledger"},
           "spec": {"selector": {"app": "tool"}, "ports": [{"port": 80}]}}"#,
    );
    write("README.md", "not a manifest: kind: nothing\n");
    write("later/40-more.yaml", &pod("more", "ledger"));
    let d = dir.display().to_string();
    let out = lab.pacific(&["apply", "-f", &d]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        stdout(&out).lines().collect::<Vec<_>>(),
        [
            "namespace/ledger created",
            "pod/tool created",
            "service/tool created"
        ],
        "{}",
        describe(&out)
    );
    assert_eq!(pod_names(&lab, "ledger"), ["tool"]);

    // Two files at once, the second with a mistake in its second document: nothing of either is
    // applied, and the error points into the second file.
    let one = lab.dir.join("one.yaml");
    let two = lab.dir.join("two.yaml");
    std::fs::write(&one, pod("one", "payments")).unwrap();
    std::fs::write(
        &two,
        format!(
            "{}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: three, namespace: payments, labls: {{}}}}\nspec: {{containers: [{{name: c, image: x}}]}}\n",
            pod("two", "payments")
        ),
    )
    .unwrap();
    let (one, two) = (one.display().to_string(), two.display().to_string());
    let out = lab.pacific(&["apply", "-f", &one, "-f", &two]);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        stderr(&out).contains(&format!("{two}: document 2 (Pod): metadata.labls")),
        "{}",
        describe(&out)
    );
    assert!(pod_names(&lab, "payments").is_empty());
    std::fs::write(&two, pod("two", "payments")).unwrap();
    let out = lab.pacific(&["apply", "-f", &one, "-f", &two]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(pod_names(&lab, "payments"), ["one", "two"]);

    let out = lab.pacific(&["delete", "-f", &d, "-f", &one]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        stdout(&out).contains(r#"namespace "ledger" deleted"#)
            && stdout(&out).contains(r#"pod "one" deleted"#),
        "{}",
        describe(&out)
    );
    assert_eq!(pod_names(&lab, "payments"), ["two"]);
    let out = lab.pacific(&["get", "ns", "ledger"]);
    assert!(!out.status.success(), "{}", describe(&out));
    // Named twice, deleted once (the second was found missing, and nothing deleted).
    let out = lab.pacific(&["delete", "pod", "two", "two", "-n", "payments"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(stdout(&out), "pod \"two\" deleted\n");
    assert!(pod_names(&lab, "payments").is_empty());

    // kubectl's words for what is not there, with the kind as kubectl names it, not as typed.
    let out = lab.pacific(&["delete", "svc", "nosuch", "-n", "payments"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert_eq!(
        stderr(&out).trim(),
        r#"Error from server (NotFound): services "nosuch" not found"#
    );
    let out = lab.pacific(&["get", "SVC", "nosuch", "-n", "payments"]);
    assert_eq!(
        stderr(&out).trim(),
        r#"Error from server (NotFound): services "nosuch" not found"#
    );
    let out = lab.pacific(&["get", "deploy", "nosuch", "-n", "payments"]);
    assert_eq!(
        stderr(&out).trim(),
        r#"Error from server (NotFound): deployments.apps "nosuch" not found"#
    );
    let out = lab.pacific(&["delete", "-f", &one]);
    assert_eq!(
        stderr(&out).trim(),
        format!(
            r#"Error from server (NotFound): error when deleting "{one}": pods "one" not found"#
        )
    );
}

/// Runs `ip ARGS...`, which must succeed.
fn ip(args: &[&str]) {
    let mut cmd = std::process::Command::new("ip");
    cmd.args(args);
    let out = run_bounded(cmd, None, std::time::Duration::from_secs(20));
    assert!(out.status.success(), "ip {args:?}: {}", describe(&out));
}

/// Makes namespace `netns` (named with the lab's prefix, so the lab's guard removes it) with an
/// `eth0` in it already: the daemon cannot then give the pod of that namespace its TAP.
fn occupy_eth0(netns: &str) {
    ip(&["netns", "add", netns]);
    ip(&[
        "-n", netns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
    ]);
}

/// A pod whose TAP could not be made (here: its namespace already holds an `eth0`) was applied
/// with exit 0 and a `warning:` line; it is an error now, naming the pod and the reason, `get
/// pods` says CreateContainerError with the reason, and the next apply builds it once it can.
/// Until then an apply of anything else is not failed by it (every later apply exited 1): it
/// is a warning there.
#[test]
fn a_pod_that_cannot_be_built_is_an_error() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up_with("khfail", LAB);
    // The namespace the daemon will give pod `clash` of `payments`, with an eth0 in it already.
    let netns = format!("{}-payments-clash", lab.prefix);
    occupy_eth0(&netns);
    let out = lab.apply(&pod("clash", "payments"), None, None);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stdout(&out).contains("pod/clash created"),
        "{}",
        describe(&out)
    );
    assert!(
        stderr(&out).contains("error: pod payments/clash: TUNSETIFF eth0"),
        "{}",
        describe(&out)
    );
    let pods = lab.items("pods", Some("payments"));
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0]["status"], "CreateContainerError", "{}", pods[0]);
    assert_eq!(pods[0]["ready"], "0/1");
    assert!(
        pods[0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("TUNSETIFF"),
        "{}",
        pods[0]
    );
    // exec says why, not that there is no such pod.
    let out = lab.exec("payments/clash", &["true"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stderr(&out)
            .contains("pod payments/clash is not running: building its port failed: TUNSETIFF"),
        "{}",
        describe(&out)
    );
    let table = lab.pacific(&["get", "pods", "-n", "payments"]);
    assert!(
        stdout(&table).contains("CreateContainerError"),
        "{}",
        describe(&table)
    );

    // An apply of something else does not fail for it (kubectl apply fails only for what it
    // applied): exit 0, its problem a warning. Every later apply exited 1 with its error.
    let out = lab.apply(&pod("other", "payments"), None, None);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        stdout(&out).contains("pod/other created"),
        "{}",
        describe(&out)
    );
    assert!(
        stderr(&out).contains("warning: pod payments/clash: TUNSETIFF eth0")
            && !stderr(&out).contains("error:"),
        "{}",
        describe(&out)
    );
    // Applied again, the failing pod itself still fails.
    let out = lab.apply(&pod("clash", "payments"), None, None);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stderr(&out).contains("error: pod payments/clash: TUNSETIFF eth0"),
        "{}",
        describe(&out)
    );

    // What stood in the way gone, the next apply builds the pod and says nothing more.
    ip(&["-n", &netns, "link", "del", "eth0"]);
    let out = lab.apply(&pod("clash", "payments"), None, None);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(stderr(&out), "", "{}", describe(&out));
    let pods = lab.items("pods", Some("payments"));
    assert!(pods.iter().all(|p| p["status"] == "Running"), "{pods:?}");
    assert!(pods.iter().all(|p| p["message"].is_null()), "{pods:?}");
}

/// kubectl habits `get` refused (`unknown kind "pods,svc"`, `invalid value 'name'`, `unexpected
/// argument '-l'`, `'--show-labels'`, `unknown kind "all"`, `unknown kind "pod/tool"`,
/// `unexpected argument 'nosuch'`): several kinds at once, `all`, `-o name`, label selectors, a
/// LABELS column, KIND/NAME and several names.
#[test]
fn get_takes_several_kinds_names_and_selectors() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up_with("khget", LAB);
    let app = "\
apiVersion: apps/v1
kind: Deployment
metadata: {name: api, namespace: payments, labels: {tier: backend}}
spec:
  replicas: 2
  selector: {matchLabels: {app: api}}
  template:
    metadata: {labels: {app: api}}
    spec:
      containers: [{name: api, image: nginx, ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: payments, labels: {tier: backend}}
spec:
  selector: {app: api}
  ports: [{port: 80, targetPort: 8080}]
";
    lab.apply_ok(app, None, None);
    lab.apply_ok(&pod("tool", "payments"), None, None);
    let get = |args: &[&str]| {
        let mut argv = vec!["get"];
        argv.extend_from_slice(args);
        let out = lab.pacific(&argv);
        assert!(out.status.success(), "get {args:?}: {}", describe(&out));
        stdout(&out)
    };
    let names = get(&["pods", "-n", "payments", "-o", "name"]);
    let names: Vec<&str> = names.lines().collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(names.iter().all(|n| n.starts_with("pod/")), "{names:?}");
    assert!(names.contains(&"pod/tool"), "{names:?}");

    let all = get(&["all", "-n", "payments", "-o", "name"]);
    assert!(
        all.contains("pod/tool\n")
            && all.contains("service/api\n")
            && all.contains("deployment.apps/api\n"),
        "{all}"
    );
    let tables = get(&["pods,svc", "-n", "payments"]);
    let blocks: Vec<&str> = tables.split("\n\n").collect();
    assert_eq!(blocks.len(), 2, "{tables}");
    assert!(
        blocks[0].starts_with("NAME ") && blocks[0].contains("\npod/tool "),
        "{tables}"
    );
    assert!(
        blocks[1].contains("TYPE") && blocks[1].contains("\nservice/api "),
        "{tables}"
    );

    let selected = get(&["pods", "-n", "payments", "-l", "app=api", "-o", "name"]);
    assert_eq!(selected.lines().count(), 2, "{selected}");
    assert!(!selected.contains("tool"), "{selected}");
    let selected = get(&["pods", "-n", "payments", "-l", "app,app!=api", "-o", "name"]);
    assert_eq!(selected.trim(), "pod/tool");
    let selected = get(&["svc,deploy", "-A", "-l", "tier=backend", "-o", "name"]);
    assert_eq!(selected, "service/api\ndeployment.apps/api\n");
    let out = lab.pacific(&["get", "pods", "-n", "payments", "-l", "app=nothing"]);
    assert!(
        out.status.success() && stdout(&out).is_empty(),
        "{}",
        describe(&out)
    );
    assert!(stderr(&out).contains("No resources found in payments namespace."));

    // KIND/NAME, and several names: those found are listed, each one missing is an error.
    let named = get(&[
        "pod/tool",
        "svc/api",
        "deploy/api",
        "-n",
        "payments",
        "-o",
        "name",
    ]);
    assert_eq!(named, "pod/tool\nservice/api\ndeployment.apps/api\n");
    let out = lab.pacific(&["get", "pods", "tool", "nosuch", "-n", "payments"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(stdout(&out).contains("\ntool "), "{}", describe(&out));
    assert_eq!(
        stderr(&out).trim(),
        r#"Error from server (NotFound): pods "nosuch" not found"#
    );

    // kubectl's exec habits: -it, and -n with POD or pod/POD.
    for argv in [
        &[
            "exec",
            "-it",
            "-n",
            "payments",
            "tool",
            "--",
            "cat",
            "/proc/sys/kernel/hostname",
        ][..],
        &[
            "exec",
            "-n",
            "payments",
            "pod/tool",
            "--",
            "cat",
            "/proc/sys/kernel/hostname",
        ],
        &[
            "exec",
            "-i",
            "payments/tool",
            "--",
            "cat",
            "/proc/sys/kernel/hostname",
        ],
    ] {
        let out = lab.pacific(argv);
        assert!(out.status.success(), "{argv:?}: {}", describe(&out));
    }
    let out = lab.pacific(&["exec", "-n", "payments", "svc/api", "--", "true"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stderr(&out).contains("give POD, pod/POD or deploy/NAME"),
        "{}",
        describe(&out)
    );

    let rows = get(&["pods,svc", "-n", "payments", "--no-headers"]);
    assert_eq!(rows.lines().count(), 4, "{rows}");
    assert!(!rows.contains("NAME") && !rows.contains("\n\n"), "{rows}");

    let labels = get(&["pods", "tool", "-n", "payments", "--show-labels"]);
    let lines: Vec<&str> = labels.lines().collect();
    assert!(lines[0].ends_with("   LABELS"), "{labels}");
    assert!(lines[1].ends_with("   app=tool"), "{labels}");

    // What `-o name` prints is what `get` and `delete` take (`deployment.apps/api` was an
    // unknown kind to both).
    let name = get(&["deploy", "-n", "payments", "-o", "name"]);
    assert_eq!(name.trim(), "deployment.apps/api");
    let shown = get(&["deployment.apps", "api", "-n", "payments", "-o", "name"]);
    assert_eq!(shown.trim(), "deployment.apps/api");
    let out = lab.pacific(&["delete", name.trim(), "-n", "payments"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(stdout(&out).trim(), r#"deployment.apps "api" deleted"#);
}

/// A pod that could not be built serves nothing: it is no endpoint of its service, in the
/// dataplane and in `get svc -o wide`, as a pod that is not ready is kept out of its service's
/// endpoints. It was one: a connection through the ClusterIP now and then went to it and
/// failed (no route to host), and ENDPOINTS listed it.
#[test]
fn a_pod_that_could_not_be_built_is_no_endpoint() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up_with("khnoep", LAB);
    let netns = format!("{}-payments-clash", lab.prefix);
    occupy_eth0(&netns);
    let serving = |name: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: payments, labels: {{app: api}}}}\nspec: {{containers: [{{name: c, image: x, ports: [{{containerPort: 8080}}]}}]}}\n"
        )
    };
    let manifest = format!(
        "{}---\n{}---\napiVersion: v1\nkind: Service\nmetadata: {{name: api, namespace: payments}}\nspec: {{selector: {{app: api}}, ports: [{{port: 80, targetPort: 8080}}]}}\n---\n{}",
        serving("good"),
        serving("clash"),
        pod("client", "payments"),
    );
    let out = lab.apply(&manifest, None, None);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let good_ip = lab
        .items("pods", Some("payments"))
        .iter()
        .find(|p| p["name"] == "good")
        .and_then(|p| p["ip"].as_str().map(str::to_string))
        .unwrap_or_default();
    let svc = lab.items("svc", Some("payments"));
    assert_eq!(
        svc[0]["endpoints"],
        serde_json::json!([format!("{good_ip}:8080")]),
        "{}",
        svc[0]
    );
    let cluster_ip = lab.cluster_ip("payments", "api");
    curl_until(
        &lab,
        "payments/client",
        &format!("http://{cluster_ip}/hostname"),
        std::time::Duration::from_secs(20),
    );
    let answers = stdout(&lab.sh(
        "payments/client",
        &format!("for i in $(seq 16); do curl -s -m 2 http://{cluster_ip}/hostname || echo failed; echo; done"),
    ));
    let answers: Vec<&str> = answers.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(answers, vec!["good"; 16]);
}

/// `exec -n NS deploy/NAME` of a deployment with two replicas was refused (`"web" matches 2 pods
/// in "payments"; name one`): kubectl runs the command in one of the deployment's pods.
#[test]
fn exec_into_a_deployment_of_several_replicas_picks_one() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up_with("khexecd", LAB);
    lab.apply_ok(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: payments}\n\
         spec:\n  replicas: 2\n  selector: {matchLabels: {app: web}}\n  template:\n    \
         metadata: {labels: {app: web}}\n    spec: {containers: [{name: c, image: busybox}]}\n",
        None,
        None,
    );
    let replicas: Vec<String> = lab
        .items("pods", Some("payments"))
        .iter()
        .filter_map(|p| p["ip"].as_str().map(str::to_string))
        .collect();
    assert_eq!(replicas.len(), 2, "{replicas:?}");
    for target in ["deploy/web", "deployment.apps/web"] {
        let out = lab.pacific(&[
            "exec", "-n", "payments", target, "--", "ip", "-4", "-o", "addr", "show", "eth0",
        ]);
        assert!(out.status.success(), "{target}: {}", describe(&out));
        let text = stdout(&out);
        assert!(
            replicas.iter().any(|ip| text.contains(&format!(" {ip}/"))),
            "{target}: ran outside the replicas {replicas:?}: {text}"
        );
    }
    let out = lab.pacific(&["exec", "-n", "payments", "deploy/nosuch", "--", "true"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stderr(&out).contains("no pod \"nosuch\""),
        "{}",
        describe(&out)
    );
}

/// `kubectl describe`, the first thing a kubectl user types about a service that does not
/// answer, was `unrecognized subcommand 'describe'`: the seed's wordpress, described as kubectl
/// lays it out, shows its ClusterIP, VIP and endpoints; a service not there is kubectl's
/// NotFound, exit 1, as `get` has it.
#[test]
fn describe_shows_a_service_as_kubectl_does() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up("khdesc");
    let out = lab.pacific(&["describe", "svc", "wordpress", "-n", "ns-dev"]);
    assert!(out.status.success(), "describe: {}", describe(&out));
    let text = stdout(&out);
    let line = |key: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{key}:")))
            .map(|l| l[key.len() + 1..].trim().to_string())
            .unwrap_or_else(|| panic!("no {key}: line in\n{text}"))
    };
    assert_eq!(line("Name"), "wordpress", "{text}");
    assert_eq!(line("Type"), "LoadBalancer", "{text}");
    assert_eq!(line("IP"), "172.96.1.90", "{text}");
    assert_eq!(line("LoadBalancer Ingress"), "172.80.88.5", "{text}");
    assert_eq!(line("Port"), "<unset>  80/TCP", "{text}");
    assert_eq!(line("NodePort"), "<unset>  32665/TCP", "{text}");
    // The deployment's one replica, the segment's first pod address.
    assert_eq!(line("Endpoints"), "172.211.0.18:80", "{text}");
    // KIND/NAME as kubectl takes it, the same description.
    let slash = lab.pacific(&["describe", "svc/wordpress", "-n", "ns-dev"]);
    assert_eq!(stdout(&slash), text, "{}", describe(&slash));

    let missing = lab.pacific(&["describe", "svc", "nosuch", "-n", "ns-dev"]);
    assert_eq!(missing.status.code(), Some(1), "{}", describe(&missing));
    assert_eq!(
        stderr(&missing).trim(),
        "Error from server (NotFound): services \"nosuch\" not found"
    );
    assert!(stdout(&missing).is_empty(), "{}", describe(&missing));
}
