//! `/openapi/v2` as client-go reads it: gnostic protobuf (`openapi_v2.Document`), asked for
//! with `Accept: application/com.github.proto-openapi.spec.v2@v1.0+protobuf` by
//! `DiscoveryClient.OpenAPISchema()` — Argo CD's cluster cache, client-side `kubectl apply`
//! and `kubectl explain --output=plaintext-openapiv2`. Raw requests go through `curl` (the
//! body kept as bytes), the real client-go through the real `kubectl`.
//!
//! Run with `cargo test --workspace --test openapi`.

mod support;

use std::collections::BTreeSet;
use std::process::Command;

use apiserver::openapi_proto::{self, pb};
use prost::Message;
use serde_json::Value;

use support::{World, assert_contains, assert_not_contains, path_str};

/// What client-go sends (the deprecated spelling) and what kube-apiserver answers.
const ASKED: &str = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf";
const ANSWERED: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

/// A response with its headers (lowercase names) and its body as bytes.
struct Raw {
    code: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` as the admin with extra request headers, body kept binary.
fn get(w: &World, path: &str, headers: &[&str]) -> Raw {
    let head = w.dir.path().join("headers.txt");
    let body = w.dir.path().join("body.bin");
    // curl leaves the file alone when there is no body (a 304).
    let _ = std::fs::remove_file(&body);
    let mut c = Command::new("curl");
    c.args(["-sS", "--max-time", "30", "-o"])
        .arg(&body)
        .arg("-D")
        .arg(&head)
        .arg("-w")
        .arg("%{http_code}")
        .arg("--cacert")
        .arg(w.pki_dir.join("ca.crt"))
        .arg("--cert")
        .arg(w.pki_dir.join("admin.crt"))
        .arg("--key")
        .arg(w.pki_dir.join("admin.key"));
    for h in headers {
        c.args(["-H", h]);
    }
    c.arg(format!("{}{path}", w.base_url()));
    let out = c.output().expect("running curl");
    let code = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("curl: {}", String::from_utf8_lossy(&out.stderr)));
    let headers = std::fs::read_to_string(&head)
        .expect("headers")
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Raw {
        code,
        headers,
        body: std::fs::read(&body).unwrap_or_default(),
    }
}

/// Every `x-kubernetes-group-version-kind` of a definition, decoded from its YAML as a
/// client does, by definition name.
fn gvks(doc: &pb::Document) -> Vec<(String, Value)> {
    let defs = &doc
        .definitions
        .as_ref()
        .expect("definitions")
        .additional_properties;
    defs.iter()
        .filter_map(|d| {
            let ext = d
                .value
                .as_ref()?
                .vendor_extension
                .iter()
                .find(|e| e.name == "x-kubernetes-group-version-kind")?;
            let yaml = &ext.value.as_ref().expect("value").yaml;
            let v: Value = serde_saphyr::from_str(yaml)
                .unwrap_or_else(|e| panic!("{}: GVK YAML {yaml:?}: {e}", d.name));
            Some((d.name.clone(), v))
        })
        .collect()
}

/// Removes the keys whose value is a proto3 default (`[]`, `false`, `0`, `""`), which the
/// protobuf form cannot tell from a missing key.
fn drop_defaults(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, v| match v {
                Value::Array(a) => !a.is_empty(),
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            });
            m.values_mut().for_each(drop_defaults);
        }
        Value::Array(a) => a.iter_mut().for_each(drop_defaults),
        _ => {}
    }
}

#[test]
fn v2_document_as_protobuf() {
    let Some(w) = support::world() else { return };
    let json = get(&w, "/openapi/v2", &["Accept: application/json"]);
    assert_eq!(json.code, 200);
    assert_eq!(json.header("content-type"), Some("application/json"));
    let json: Value = serde_json::from_slice(&json.body).expect("JSON document");

    let pb_resp = get(&w, "/openapi/v2", &[&format!("Accept: {ASKED}")]);
    assert_eq!(
        pb_resp.code,
        200,
        "{}",
        String::from_utf8_lossy(&pb_resp.body)
    );
    assert_eq!(pb_resp.header("content-type"), Some(ANSWERED));
    assert_eq!(pb_resp.header("vary"), Some("Accept"));
    // client-go: proto.Unmarshal into openapi_v2.Document.
    let doc =
        pb::Document::decode(pb_resp.body.as_slice()).expect("decodes as openapi.v2.Document");
    assert_eq!(doc.swagger, "2.0");
    assert_eq!(
        doc.info.as_ref().map(|i| i.title.as_str()),
        json.pointer("/info/title").and_then(Value::as_str)
    );

    // Definitions: the same names, and the Substrate kinds of both groups carry their GVK.
    let names: BTreeSet<&str> = doc
        .definitions
        .as_ref()
        .expect("definitions")
        .additional_properties
        .iter()
        .map(|d| d.name.as_str())
        .collect();
    let json_names: BTreeSet<&str> = json["definitions"]
        .as_object()
        .expect("definitions")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(names, json_names);
    let gvks = gvks(&doc);
    for (group, kind) in [
        ("substrate.ate.dev", "Actor"),
        ("substrate.ate.dev", "Atespace"),
        ("ate.dev", "ActorTemplate"),
    ] {
        let (name, v) = gvks
            .iter()
            .find(|(_, v)| v[0]["group"] == group && v[0]["kind"] == kind)
            .unwrap_or_else(|| panic!("no definition tagged {group} {kind}: {gvks:?}"));
        assert_eq!(
            v, &json["definitions"][name]["x-kubernetes-group-version-kind"],
            "{name}"
        );
    }
    // One definition per GVK: client-go's `managedfields.NewGVKParser` (Argo CD's diffs)
    // refuses a document with a duplicate entry.
    let mut seen = BTreeSet::new();
    for (name, list) in &gvks {
        for gvk in list.as_array().expect("a GVK list") {
            assert!(seen.insert(gvk.to_string()), "{gvk} again in {name}");
        }
    }
    let actor = doc
        .definitions
        .as_ref()
        .expect("definitions")
        .additional_properties
        .iter()
        .find(|d| d.name == "dev.ate.substrate.v1alpha1.Actor")
        .and_then(|d| d.value.as_ref())
        .expect("Actor definition");
    let props: Vec<&str> = actor
        .properties
        .as_ref()
        .expect("properties")
        .additional_properties
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    for p in ["apiVersion", "kind", "metadata", "spec", "status"] {
        assert!(props.contains(&p), "{p} in {props:?}");
    }

    // Paths and operations: the same, operation by operation.
    let paths = &doc.paths.as_ref().expect("paths").path;
    let path_names: BTreeSet<&str> = paths.iter().map(|p| p.name.as_str()).collect();
    let json_paths: BTreeSet<&str> = json["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(path_names, json_paths);
    assert!(
        path_names
            .contains("/apis/substrate.ate.dev/v1alpha1/namespaces/{namespace}/actors/{name}")
    );
    for p in paths {
        let item = p.value.as_ref().expect("path item");
        for (method, op) in [
            ("get", &item.get),
            ("put", &item.put),
            ("post", &item.post),
            ("delete", &item.delete),
            ("patch", &item.patch),
        ] {
            let want = json["paths"][&p.name][method]["operationId"].as_str();
            assert_eq!(
                op.as_ref().map(|o| o.operation_id.as_str()),
                want,
                "{} {method}",
                p.name
            );
        }
    }
    // And the whole document reads back as the JSON one (protobuf does not keep a default
    // value apart from a missing one).
    let mut back = openapi_proto::to_json(&doc).expect("Any.yaml decodes");
    let mut json = json;
    drop_defaults(&mut back);
    drop_defaults(&mut json);
    assert!(back == json, "the protobuf document reads back differently");

    // Caching: the ETag of the protobuf bytes, 304 when it matches; the current spelling
    // gives the same bytes.
    let etag = pb_resp.header("etag").expect("ETag").to_owned();
    let again = get(
        &w,
        "/openapi/v2",
        &[
            &format!("Accept: {ANSWERED}"),
            &format!("If-None-Match: {etag}"),
        ],
    );
    assert_eq!(again.code, 304);
    assert!(again.body.is_empty());
    let fresh = get(&w, "/openapi/v2", &[&format!("Accept: {ANSWERED}")]);
    assert_eq!(
        (fresh.code, fresh.body.as_slice()),
        (200, pb_resp.body.as_slice())
    );
    let stale = get(
        &w,
        "/openapi/v2",
        &[&format!("Accept: {ASKED}"), "If-None-Match: \"0\""],
    );
    assert_eq!(stale.code, 200);

    // A type the endpoint does not serve: 406 with a Status.
    let refused = get(&w, "/openapi/v2", &["Accept: application/x-unknown"]);
    assert_eq!(refused.code, 406);
    let status: Value = serde_json::from_slice(&refused.body).expect("Status");
    assert_eq!(
        (
            status["kind"].as_str(),
            status["reason"].as_str(),
            status["code"].as_u64()
        ),
        (Some("Status"), Some("NotAcceptable"), Some(406))
    );
    assert_contains(status["message"].as_str().unwrap_or_default(), ANSWERED);
}

/// The real client-go: `kubectl explain` on the v2 document (decode, GVK lookup, `$ref` to
/// ObjectMeta) and client-side `kubectl apply` of a change, which reads the v2 document to
/// pick a patch type.
#[test]
fn kubectl_reads_the_v2_document() {
    let Some(w) = support::world() else { return };
    let out = w.ok(&["explain", "actors.spec", "--output=plaintext-openapiv2"]);
    assert_contains(&out, "VERSION:  substrate.ate.dev/v1alpha1");
    assert_contains(&out, "template\t<Object> -required-");
    assert_contains(&out, "workerSelector\t<Object>");
    let out = w.ok(&[
        "explain",
        "actors.metadata.labels",
        "--output=plaintext-openapiv2",
    ]);
    assert_contains(&out, "labels <map[string]string>");
    let out = w.ok(&["explain", "actortemplates", "--output=plaintext-openapiv2"]);
    assert_contains(&out, "VERSION:  ate.dev/v1alpha1");

    w.atespace("team-o");
    let v1 = w.file("a.yaml", &support::actor_yaml("team-o", "a", ""));
    w.ok(&["apply", "-f", path_str(&v1)]);
    let v2 = w.file(
        "a2.yaml",
        &support::actor_yaml("team-o", "a", "  activation: Always\n"),
    );
    let out = w.kubectl(&["apply", "-f", path_str(&v2), "-v=6"]);
    assert!(out.success(), "{out}");
    assert_contains(&out.stdout, "actor.substrate.ate.dev/a configured");
    assert!(
        out.stderr
            .lines()
            .any(|l| l.contains("/openapi/v2") && l.contains("200 OK")),
        "kubectl read /openapi/v2: {out}"
    );
    for bad in [
        "mime:",
        "cannot parse invalid wire-format data",
        "InternalError",
    ] {
        assert_not_contains(&out.stderr, bad);
    }
    assert_eq!(
        w.jsonpath("actor", "a", "team-o", "{.spec.activation}"),
        "Always"
    );
}
