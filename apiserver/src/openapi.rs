//! OpenAPI documents: v3 per group/version (`/openapi/v3/...`) and one Swagger 2.0 document
//! (`/openapi/v2`), shaped like the ones kube-apiserver publishes for CRDs.
//!
//! - Schemas are named like Kubernetes names them: `dev.ate.substrate.v1alpha1.Actor` (group
//!   reversed, then version and kind), `...ActorList`, `io.k8s.apimachinery.pkg.apis.meta.v1.*`.
//!   A kind's schema is the structural schema of its CRD with `apiVersion`, `kind` and
//!   `metadata` (a reference to `ObjectMeta`) added and an `x-kubernetes-group-version-kind`
//!   extension. The apimachinery definitions come from k8s-openapi's `JsonSchema` impls.
//! - Paths cover every endpoint the apiserver serves for a resource: the collection (`get`
//!   list/watch, `post`, `delete` collection), the all-namespaces list of a namespaced
//!   resource, the item (`get`, `put`, `patch`, `delete`) and the `status` subresource. Every
//!   operation has an `operationId`, `x-kubernetes-action` and `x-kubernetes-group-version-kind`,
//!   and its query parameters inline on the operation.
//!
//! Two clients depend on details here:
//!
//! - `kubectl explain` (v3) takes the GVK from an operation on the resource's path, then the
//!   schema whose `x-kubernetes-group-version-kind` contains it, and follows `$ref`/`allOf`.
//! - kubectl decides whether to send `fieldValidation` by finding, in the v3 document of the
//!   group/version, a `patch` operation tagged with the object's GVK and looking for a
//!   parameter named `fieldValidation` among that *operation's* parameters (not the path's;
//!   client-go `queryParamVerifierV3`). Every `post`/`put`/`patch` operation carries it.
//!
//! [`v3_index`] lists each document with `?hash=<sha512>` of its content so clients can cache it.
//! The v2 document is also served as gnostic protobuf, converted once by
//! [`crate::openapi_proto`] ([`v2_protobuf`]).

use std::collections::BTreeMap;
use std::sync::LazyLock;

use crds::resources::{ALL, ResourceInfo};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as metav1;
use k8s_openapi::schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha512};

const META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1";

const API_VERSION_DESCRIPTION: &str = "APIVersion defines the versioned schema of this representation of an object. Servers should convert recognized schemas to the latest internal value, and may reject unrecognized values. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources";
const KIND_DESCRIPTION: &str = "Kind is a string value representing the REST resource this object represents. Servers may infer this from the endpoint the client submits requests to. Cannot be updated. In CamelCase. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds";
const METADATA_DESCRIPTION: &str = "Standard object's metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";
const LIST_METADATA_DESCRIPTION: &str = "Standard list metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds";

/// Which OpenAPI version a document is built for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flavor {
    /// OpenAPI 3.0: `#/components/schemas/`, `requestBody`, `content`, `schema` on parameters.
    V3,
    /// Swagger 2.0: `#/definitions/`, body parameters, `type` on parameters, no `nullable`.
    V2,
}

impl Flavor {
    fn reference(self, name: &str) -> String {
        match self {
            Self::V3 => format!("#/components/schemas/{name}"),
            Self::V2 => format!("#/definitions/{name}"),
        }
    }

    /// A reference with a description. OpenAPI ignores siblings of `$ref`, so v3 wraps the
    /// reference in `allOf` (as kube-apiserver does); v2 keeps Kubernetes' swagger style.
    fn described_ref(self, name: &str, description: &str) -> Value {
        match self {
            Self::V3 => {
                json!({"description": description, "allOf": [{"$ref": self.reference(name)}]})
            }
            Self::V2 => json!({"description": description, "$ref": self.reference(name)}),
        }
    }
}

/// Group, version and kind, as the `x-kubernetes-group-version-kind` extension spells them.
fn gvk(group: &str, version: &str, kind: &str) -> Value {
    json!({"group": group, "kind": kind, "version": version})
}

/// `substrate.ate.dev` + `v1alpha1` + `Actor` → `dev.ate.substrate.v1alpha1.Actor`
/// (kube-openapi `ToRESTFriendlyName`).
fn definition_name(group: &str, version: &str, kind: &str) -> String {
    if group.is_empty() {
        return format!("io.k8s.api.core.{version}.{kind}");
    }
    // Kubernetes' own groups: `coordination.k8s.io` → `io.k8s.api.coordination`.
    if let Some(short) = group.strip_suffix(".k8s.io") {
        return format!("io.k8s.api.{short}.{version}.{kind}");
    }
    let reversed: Vec<&str> = group.split('.').rev().collect();
    format!("{}.{version}.{kind}", reversed.join("."))
}

/// The document key of a group/version: `apis/<group>/<version>`, or `api/v1`.
fn document_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

// ---- schemas ----

/// The apimachinery definitions every document carries, from k8s-openapi.
fn meta_definitions(flavor: Flavor) -> Map<String, Value> {
    let settings = match flavor {
        Flavor::V3 => SchemaSettings::openapi3(),
        Flavor::V2 => SchemaSettings::draft07().with(|s| {
            s.meta_schema = None;
            s.transforms.clear();
        }),
    };
    let mut generator = settings.into_generator();
    generator.subschema_for::<metav1::ObjectMeta>();
    generator.subschema_for::<metav1::ListMeta>();
    generator.subschema_for::<metav1::Status>();
    generator.subschema_for::<metav1::DeleteOptions>();
    generator.subschema_for::<metav1::Patch>();
    generator.subschema_for::<metav1::WatchEvent<Value>>();
    generator.subschema_for::<metav1::Condition>();
    generator.subschema_for::<metav1::LabelSelector>();
    generator.subschema_for::<metav1::Time>();
    generator.take_definitions(true)
}

/// Removes what Swagger 2.0 schemas cannot say (`nullable`, `anyOf`, `oneOf`, `not`).
fn to_v2_schema(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            for key in ["nullable", "anyOf", "oneOf", "not"] {
                map.remove(key);
            }
            for v in map.values_mut() {
                to_v2_schema(v);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(to_v2_schema),
        _ => {}
    }
}

/// Joins the hard-wrapped lines of doc-comment descriptions (`a\nb` → `a b`), keeping
/// paragraph breaks, as Kubernetes' generators do; kubectl re-wraps descriptions itself.
fn unwrap_descriptions(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                match v {
                    Value::String(d) if k == "description" => {
                        *d = d
                            .split("\n\n")
                            .map(|para| {
                                para.split('\n')
                                    .map(str::trim)
                                    .collect::<Vec<_>>()
                                    .join(" ")
                            })
                            .collect::<Vec<_>>()
                            .join("\n\n");
                    }
                    _ => unwrap_descriptions(v),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(unwrap_descriptions),
        _ => {}
    }
}

/// The schema of a kind: the CRD schema plus type and object metadata.
fn kind_schema(res: &ResourceInfo, flavor: Flavor) -> Value {
    let mut schema = res.schema();
    unwrap_descriptions(&mut schema);
    if flavor == Flavor::V2 {
        to_v2_schema(&mut schema);
    }
    let Value::Object(mut map) = schema else {
        return json!({"type": "object"});
    };
    map.remove("title");
    let mut properties = Map::new();
    properties.insert(
        "apiVersion".into(),
        json!({"description": API_VERSION_DESCRIPTION, "type": "string"}),
    );
    properties.insert(
        "kind".into(),
        json!({"description": KIND_DESCRIPTION, "type": "string"}),
    );
    properties.insert(
        "metadata".into(),
        flavor.described_ref(&format!("{META}.ObjectMeta"), METADATA_DESCRIPTION),
    );
    if let Some(Value::Object(own)) = map.remove("properties") {
        for (k, v) in own {
            properties.entry(k).or_insert(v);
        }
    }
    map.insert("properties".into(), Value::Object(properties));
    map.insert("type".into(), "object".into());
    map.insert(
        "x-kubernetes-group-version-kind".into(),
        json!([gvk(res.group, res.version, res.kind)]),
    );
    Value::Object(map)
}

/// The schema of a list kind (`<Kind>List`).
fn list_schema(
    group: &str,
    version: &str,
    kind: &str,
    list_kind: &str,
    plural: &str,
    flavor: Flavor,
) -> Value {
    json!({
        "description": format!("{list_kind} is a list of {kind}"),
        "type": "object",
        "required": ["items"],
        "properties": {
            "apiVersion": {"description": API_VERSION_DESCRIPTION, "type": "string"},
            "items": {
                "description": format!("List of {plural}. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md"),
                "type": "array",
                "items": {"$ref": flavor.reference(&definition_name(group, version, kind))},
            },
            "kind": {"description": KIND_DESCRIPTION, "type": "string"},
            "metadata": flavor.described_ref(&format!("{META}.ListMeta"), LIST_METADATA_DESCRIPTION),
        },
        "x-kubernetes-group-version-kind": [gvk(group, version, list_kind)],
    })
}

// ---- parameters ----

#[derive(Clone, Copy)]
enum ParamType {
    String,
    Boolean,
    Integer,
}

/// A query or path parameter.
#[derive(Clone, Copy)]
struct Param {
    name: &'static str,
    path: bool,
    ty: ParamType,
    description: &'static str,
}

const fn query(name: &'static str, ty: ParamType, description: &'static str) -> Param {
    Param {
        name,
        path: false,
        ty,
        description,
    }
}

const PRETTY: Param = query(
    "pretty",
    ParamType::String,
    "If 'true', then the output is pretty printed. Defaults to 'false' unless the user-agent indicates a browser or command-line HTTP tool (curl and wget).",
);
const DRY_RUN: Param = query(
    "dryRun",
    ParamType::String,
    "When present, indicates that modifications should not be persisted. An invalid or unrecognized dryRun directive will result in an error response and no further processing of the request. Valid values are: - All: all dry run stages will be processed",
);
const FIELD_MANAGER: Param = query(
    "fieldManager",
    ParamType::String,
    "fieldManager is a name associated with the actor or entity that is making these changes. The value must be less than or 128 characters long, and only contain printable characters, as defined by https://golang.org/pkg/unicode/#IsPrint. This field is required for apply requests (application/apply-patch) but optional for non-apply patch types.",
);
const FIELD_VALIDATION: Param = query(
    "fieldValidation",
    ParamType::String,
    "fieldValidation instructs the server on how to handle objects in the request (POST/PUT/PATCH) containing unknown or duplicate fields. Valid values are: - Ignore: This will ignore any unknown fields that are silently dropped from the object, and will ignore all but the last duplicate field that the decoder encounters. - Warn: This will send a warning via the standard warning response header for each unknown field that is dropped from the object, and for each duplicate field that is encountered. The request will still succeed if there are no other errors, and will only persist the last of any duplicate fields. This is the default. - Strict: This will fail the request with a BadRequest error if any unknown fields would be dropped from the object, or if any duplicate fields are present. The error returned from the server will contain all unknown and duplicate fields encountered.",
);
const FORCE: Param = query(
    "force",
    ParamType::Boolean,
    "Force is going to \"force\" Apply requests. It means user will re-acquire conflicting fields owned by other people. Force flag must be unset for non-apply patch requests.",
);
const ALLOW_WATCH_BOOKMARKS: Param = query(
    "allowWatchBookmarks",
    ParamType::Boolean,
    "allowWatchBookmarks requests watch events with type \"BOOKMARK\". Servers that do not implement bookmarks may ignore this flag and bookmarks are sent at the server's discretion. Clients should not assume bookmarks are returned at any specific interval, nor may they assume the server will send any BOOKMARK event during a session. If this is not a watch, this field is ignored.",
);
const CONTINUE: Param = query(
    "continue",
    ParamType::String,
    "The continue option should be set when retrieving more results from the server. Since this value is server defined, clients may only use the continue value from a previous query result with identical query parameters (except for the value of continue) and the server may reject a continue value it does not recognize. If the specified continue value is no longer valid the server will respond with a 410 ResourceExpired error together with a continue token.",
);
const FIELD_SELECTOR: Param = query(
    "fieldSelector",
    ParamType::String,
    "A selector to restrict the list of returned objects by their fields. Defaults to everything.",
);
const LABEL_SELECTOR: Param = query(
    "labelSelector",
    ParamType::String,
    "A selector to restrict the list of returned objects by their labels. Defaults to everything.",
);
const LIMIT: Param = query(
    "limit",
    ParamType::Integer,
    "limit is a maximum number of responses to return for a list call. If more items exist, the server will set the `continue` field on the list metadata to a value that can be used with the same initial query to retrieve the next set of results. This field is not supported if watch is true.",
);
const RESOURCE_VERSION: Param = query(
    "resourceVersion",
    ParamType::String,
    "resourceVersion sets a constraint on what resource versions a request may be served from. See https://kubernetes.io/docs/reference/using-api/api-concepts/#resource-versions for details.\n\nDefaults to unset",
);
const RESOURCE_VERSION_MATCH: Param = query(
    "resourceVersionMatch",
    ParamType::String,
    "resourceVersionMatch determines how resourceVersion is applied to list calls. It is highly recommended that resourceVersionMatch be set for list calls where resourceVersion is set See https://kubernetes.io/docs/reference/using-api/api-concepts/#resource-versions for details.\n\nDefaults to unset",
);
const SEND_INITIAL_EVENTS: Param = query(
    "sendInitialEvents",
    ParamType::Boolean,
    "`sendInitialEvents=true` may be set together with `watch=true`. In that case, the watch stream will begin with synthetic events to produce the current state of objects in the collection. Once all such events have been sent, a synthetic \"Bookmark\" event will be sent.",
);
const TIMEOUT_SECONDS: Param = query(
    "timeoutSeconds",
    ParamType::Integer,
    "Timeout for the list/watch call. This limits the duration of the call, regardless of any activity or inactivity.",
);
const WATCH: Param = query(
    "watch",
    ParamType::Boolean,
    "Watch for changes to the described resources and return them as a stream of add, update, and remove notifications. Specify resourceVersion.",
);
const GRACE_PERIOD_SECONDS: Param = query(
    "gracePeriodSeconds",
    ParamType::Integer,
    "The duration in seconds before the object should be deleted. Value must be non-negative integer. The value zero indicates delete immediately. If this value is nil, the default grace period for the specified type will be used.",
);
const ORPHAN_DEPENDENTS: Param = query(
    "orphanDependents",
    ParamType::Boolean,
    "Deprecated: please use the PropagationPolicy, this field will be deprecated in 1.7. Should the dependent objects be orphaned.",
);
const PROPAGATION_POLICY: Param = query(
    "propagationPolicy",
    ParamType::String,
    "Whether and how garbage collection will be performed. Either this field or OrphanDependents may be set, but not both. Acceptable values are: 'Orphan' - orphan the dependents; 'Background' - allow the garbage collector to delete the dependents in the background; 'Foreground' - a cascading policy that deletes all dependents in the foreground.",
);
const NAMESPACE: Param = Param {
    name: "namespace",
    path: true,
    ty: ParamType::String,
    description: "object name and auth scope, such as for teams and projects",
};
const NAME: Param = Param {
    name: "name",
    path: true,
    ty: ParamType::String,
    description: "name of the object",
};

const LIST_PARAMS: &[Param] = &[
    ALLOW_WATCH_BOOKMARKS,
    CONTINUE,
    FIELD_SELECTOR,
    LABEL_SELECTOR,
    LIMIT,
    RESOURCE_VERSION,
    RESOURCE_VERSION_MATCH,
    SEND_INITIAL_EVENTS,
    TIMEOUT_SECONDS,
    WATCH,
];
const WRITE_PARAMS: &[Param] = &[DRY_RUN, FIELD_MANAGER, FIELD_VALIDATION];
const PATCH_PARAMS: &[Param] = &[DRY_RUN, FIELD_MANAGER, FIELD_VALIDATION, FORCE];
const DELETE_PARAMS: &[Param] = &[
    DRY_RUN,
    GRACE_PERIOD_SECONDS,
    ORPHAN_DEPENDENTS,
    PROPAGATION_POLICY,
];

fn param_json(p: &Param, flavor: Flavor) -> Value {
    let ty = match p.ty {
        ParamType::String => "string",
        ParamType::Boolean => "boolean",
        ParamType::Integer => "integer",
    };
    let mut v = json!({
        "name": p.name,
        "in": if p.path { "path" } else { "query" },
        "description": p.description,
    });
    if p.path {
        v["required"] = json!(true);
    }
    match flavor {
        Flavor::V3 => v["schema"] = json!({"type": ty, "uniqueItems": true}),
        Flavor::V2 => {
            v["type"] = json!(ty);
            v["uniqueItems"] = json!(true);
        }
    }
    v
}

// ---- operations and paths ----

/// What an operation does, as `x-kubernetes-action` says.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Action {
    List,
    Post,
    DeleteCollection,
    Get,
    Put,
    Patch,
    Delete,
}

/// The request body of an operation.
enum Body {
    None,
    /// The object itself (`post`, `put`).
    Object,
    /// A patch document.
    Patch,
    /// Optional `DeleteOptions`.
    DeleteOptions,
}

const PATCH_TYPES: &[&str] = &[
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/apply-patch+yaml",
];
const PRODUCES: &[&str] = &["application/json", "application/yaml"];

/// Everything needed to write one operation.
struct Operation<'a> {
    action: Action,
    operation_id: String,
    description: String,
    tag: &'a str,
    gvk: Value,
    params: &'a [Param],
    body: Body,
    /// Definition name of the object (`Body::Object`) and of most responses.
    object: &'a str,
    /// Responses: status code and definition name.
    responses: Vec<(&'static str, String)>,
}

impl Operation<'_> {
    fn to_json(&self, flavor: Flavor) -> Value {
        let mut params: Vec<Value> = self.params.iter().map(|p| param_json(p, flavor)).collect();
        let mut op = json!({
            "tags": [self.tag],
            "description": self.description,
            "operationId": self.operation_id,
        });
        let consumes: &[&str] = match self.body {
            Body::Patch => PATCH_TYPES,
            _ => &["*/*"],
        };
        let mut responses = Map::new();
        for (code, def) in &self.responses {
            let text = match *code {
                "201" => "Created",
                "202" => "Accepted",
                _ => "OK",
            };
            let resp = match flavor {
                Flavor::V3 => {
                    let content: Map<String, Value> = PRODUCES
                        .iter()
                        .map(|t| {
                            (
                                t.to_string(),
                                json!({"schema": {"$ref": flavor.reference(def)}}),
                            )
                        })
                        .collect();
                    json!({"description": text, "content": content})
                }
                Flavor::V2 => {
                    json!({"description": text, "schema": {"$ref": flavor.reference(def)}})
                }
            };
            responses.insert(code.to_string(), resp);
        }
        // Every failure is a `Status`; these are the codes each action really answers.
        let status_ref = format!("{META}.Status");
        for (code, text) in error_responses(self.action) {
            let resp = match flavor {
                Flavor::V3 => {
                    let content: Map<String, Value> = PRODUCES
                        .iter()
                        .map(|t| {
                            (
                                t.to_string(),
                                json!({"schema": {"$ref": flavor.reference(&status_ref)}}),
                            )
                        })
                        .collect();
                    json!({"description": text, "content": content})
                }
                Flavor::V2 => {
                    json!({"description": text, "schema": {"$ref": flavor.reference(&status_ref)}})
                }
            };
            responses.insert(code.to_string(), resp);
        }
        let body_def = match self.body {
            Body::None => None,
            Body::Object => Some((self.object.to_string(), true)),
            Body::Patch => Some((format!("{META}.Patch"), true)),
            Body::DeleteOptions => Some((format!("{META}.DeleteOptions"), false)),
        };
        match flavor {
            Flavor::V3 => {
                if let Some((def, required)) = body_def {
                    let content: Map<String, Value> = consumes
                        .iter()
                        .map(|t| {
                            (
                                t.to_string(),
                                json!({"schema": {"$ref": flavor.reference(&def)}}),
                            )
                        })
                        .collect();
                    op["requestBody"] = json!({"content": content, "required": required});
                }
            }
            Flavor::V2 => {
                if let Some((def, required)) = body_def {
                    params.insert(
                        0,
                        json!({"name": "body", "in": "body", "required": required,
                               "schema": {"$ref": flavor.reference(&def)}}),
                    );
                    op["consumes"] = json!(consumes);
                }
                op["produces"] = json!(PRODUCES);
                op["schemes"] = json!(["https"]);
            }
        }
        op["parameters"] = Value::Array(params);
        op["responses"] = Value::Object(responses);
        let action = match self.action {
            Action::List => "list",
            Action::Post => "post",
            Action::DeleteCollection => "deletecollection",
            Action::Get => "get",
            Action::Put => "put",
            Action::Patch => "patch",
            Action::Delete => "delete",
        };
        op["x-kubernetes-action"] = json!(action);
        op["x-kubernetes-group-version-kind"] = self.gvk.clone();
        op
    }
}

/// The failures an operation answers with a `Status` (kube-apiserver documents only 401; a
/// fuzzer checking status-code conformance needs them all). 5xx are not listed but 503 (the
/// store is unreachable) and 504 (a resourceVersion the cache did not reach in time).
fn error_responses(action: Action) -> Vec<(&'static str, &'static str)> {
    let mut v = vec![
        ("400", "BadRequest"),
        ("401", "Unauthorized"),
        ("403", "Forbidden"),
        ("404", "NotFound"),
        ("406", "NotAcceptable"),
        ("414", "RequestURITooLong"),
    ];
    let writes = [
        ("409", "Conflict"),
        ("413", "RequestEntityTooLarge"),
        ("415", "UnsupportedMediaType"),
        ("422", "Invalid"),
    ];
    match action {
        Action::Get => {}
        Action::List => v.extend([("410", "Expired"), ("422", "Invalid"), ("504", "Timeout")]),
        Action::DeleteCollection => {
            v.extend(writes);
            v.extend([("410", "Expired"), ("504", "Timeout")]);
        }
        Action::Post | Action::Put | Action::Patch | Action::Delete => v.extend(writes),
    }
    v.push(("503", "ServiceUnavailable"));
    v.sort_unstable();
    v
}

/// `substrate.ate.dev` → `SubstrateAteDev`, `v1alpha1` → `V1alpha1`.
fn camel(s: &str) -> String {
    s.split(['.', '-'])
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map_or_else(String::new, |c| {
                c.to_ascii_uppercase().to_string() + chars.as_str()
            })
        })
        .collect()
}

fn article(kind: &str) -> &'static str {
    if kind.starts_with(['A', 'E', 'I', 'O', 'U']) {
        " an "
    } else {
        " a "
    }
}

/// The path items of one resource.
fn resource_paths(res: &ResourceInfo, flavor: Flavor) -> Vec<(String, Value)> {
    let kind_def = definition_name(res.group, res.version, res.kind);
    let list_def = definition_name(res.group, res.version, res.list_kind);
    let status_def = format!("{META}.Status");
    let gv = format!("{}{}", camel(res.group), camel(res.version));
    let tag = format!("{}_{}", lower_camel(res.group), res.version);
    let ns = if res.namespaced { "Namespaced" } else { "" };
    let kind = res.kind;
    let gvk_value = gvk(res.group, res.version, res.kind);
    let base = format!("/apis/{}/{}", res.group, res.version);
    let collection = if res.namespaced {
        format!("{base}/namespaces/{{namespace}}/{}", res.plural)
    } else {
        format!("{base}/{}", res.plural)
    };
    let scope_params: &[Param] = if res.namespaced { &[NAMESPACE] } else { &[] };

    let op = |action: Action,
              id: String,
              description: String,
              params: &'static [Param],
              body: Body,
              responses: Vec<(&'static str, String)>| {
        Operation {
            action,
            operation_id: id,
            description,
            tag: &tag,
            gvk: gvk_value.clone(),
            params,
            body,
            object: &kind_def,
            responses,
        }
        .to_json(flavor)
    };

    let path_item = |params: Vec<Param>, ops: Vec<(&str, Value)>| {
        let mut item = Map::new();
        for (method, o) in ops {
            item.insert(method.to_string(), o);
        }
        let mut all = params;
        all.push(PRETTY);
        item.insert(
            "parameters".into(),
            Value::Array(all.iter().map(|p| param_json(p, flavor)).collect()),
        );
        Value::Object(item)
    };
    let named = |extra: &[Param]| {
        let mut p = vec![NAME];
        p.extend_from_slice(extra);
        p
    };

    let mut out = Vec::new();
    if res.namespaced {
        out.push((
            format!("{base}/{}", res.plural),
            path_item(
                Vec::new(),
                vec![(
                    "get",
                    op(
                        Action::List,
                        format!("list{gv}{kind}ForAllNamespaces"),
                        format!("list objects of kind {kind}"),
                        LIST_PARAMS,
                        Body::None,
                        vec![("200", list_def.clone())],
                    ),
                )],
            ),
        ));
    }
    let delete_collection_params: &'static [Param] = &[
        ALLOW_WATCH_BOOKMARKS,
        CONTINUE,
        DRY_RUN,
        FIELD_SELECTOR,
        GRACE_PERIOD_SECONDS,
        LABEL_SELECTOR,
        LIMIT,
        ORPHAN_DEPENDENTS,
        PROPAGATION_POLICY,
        RESOURCE_VERSION,
        RESOURCE_VERSION_MATCH,
        SEND_INITIAL_EVENTS,
        TIMEOUT_SECONDS,
    ];
    out.push((
        collection.clone(),
        path_item(
            scope_params.to_vec(),
            vec![
                (
                    "get",
                    op(
                        Action::List,
                        format!("list{gv}{ns}{kind}"),
                        format!("list objects of kind {kind}"),
                        LIST_PARAMS,
                        Body::None,
                        vec![("200", list_def.clone())],
                    ),
                ),
                (
                    "post",
                    op(
                        Action::Post,
                        format!("create{gv}{ns}{kind}"),
                        format!("create{}{kind}", article(kind)),
                        WRITE_PARAMS,
                        Body::Object,
                        vec![
                            ("200", kind_def.clone()),
                            ("201", kind_def.clone()),
                            ("202", kind_def.clone()),
                        ],
                    ),
                ),
                (
                    "delete",
                    op(
                        Action::DeleteCollection,
                        format!("delete{gv}Collection{ns}{kind}"),
                        format!("delete collection of {kind}"),
                        delete_collection_params,
                        Body::DeleteOptions,
                        vec![("200", status_def.clone())],
                    ),
                ),
            ],
        ),
    ));
    out.push((
        format!("{collection}/{{name}}"),
        path_item(
            named(scope_params),
            vec![
                (
                    "get",
                    op(
                        Action::Get,
                        format!("read{gv}{ns}{kind}"),
                        format!("read the specified {kind}"),
                        &[RESOURCE_VERSION],
                        Body::None,
                        vec![("200", kind_def.clone())],
                    ),
                ),
                (
                    "put",
                    op(
                        Action::Put,
                        format!("replace{gv}{ns}{kind}"),
                        format!("replace the specified {kind}"),
                        WRITE_PARAMS,
                        Body::Object,
                        vec![("200", kind_def.clone()), ("201", kind_def.clone())],
                    ),
                ),
                (
                    "delete",
                    op(
                        Action::Delete,
                        format!("delete{gv}{ns}{kind}"),
                        format!("delete{}{kind}", article(kind)),
                        DELETE_PARAMS,
                        Body::DeleteOptions,
                        vec![("200", status_def.clone()), ("202", status_def.clone())],
                    ),
                ),
                (
                    "patch",
                    op(
                        Action::Patch,
                        format!("patch{gv}{ns}{kind}"),
                        format!("partially update the specified {kind}"),
                        PATCH_PARAMS,
                        Body::Patch,
                        vec![("200", kind_def.clone()), ("201", kind_def.clone())],
                    ),
                ),
            ],
        ),
    ));
    if res.has_status {
        out.push((
            format!("{collection}/{{name}}/status"),
            path_item(
                named(scope_params),
                vec![
                    (
                        "get",
                        op(
                            Action::Get,
                            format!("read{gv}{ns}{kind}Status"),
                            format!("read status of the specified {kind}"),
                            &[RESOURCE_VERSION],
                            Body::None,
                            vec![("200", kind_def.clone())],
                        ),
                    ),
                    (
                        "put",
                        op(
                            Action::Put,
                            format!("replace{gv}{ns}{kind}Status"),
                            format!("replace status of the specified {kind}"),
                            WRITE_PARAMS,
                            Body::Object,
                            vec![("200", kind_def.clone()), ("201", kind_def.clone())],
                        ),
                    ),
                    (
                        "patch",
                        op(
                            Action::Patch,
                            format!("patch{gv}{ns}{kind}Status"),
                            format!("partially update status of the specified {kind}"),
                            PATCH_PARAMS,
                            Body::Patch,
                            vec![("200", kind_def.clone()), ("201", kind_def.clone())],
                        ),
                    ),
                ],
            ),
        ));
    }
    out
}

/// `substrate.ate.dev` → `substrateAteDev` (the tag style of kube-apiserver).
fn lower_camel(s: &str) -> String {
    let c = camel(s);
    let mut chars = c.chars();
    chars.next().map_or_else(String::new, |first| {
        first.to_ascii_lowercase().to_string() + chars.as_str()
    })
}

/// The read-only core `namespaces` paths (standalone mode answers them from atespaces).
fn namespace_paths(flavor: Flavor) -> Vec<(String, Value)> {
    let ns_gvk = gvk("", "v1", "Namespace");
    let op = |action, id: &str, description: &str, params: &'static [Param], def: &str| {
        Operation {
            action,
            operation_id: id.to_string(),
            description: description.to_string(),
            tag: "core_v1",
            gvk: ns_gvk.clone(),
            params,
            body: Body::None,
            object: "",
            responses: vec![("200", def.to_string())],
        }
        .to_json(flavor)
    };
    let pretty = param_json(&PRETTY, flavor);
    let name = param_json(
        &Param {
            description: "name of the Namespace",
            ..NAME
        },
        flavor,
    );
    vec![
        (
            "/api/v1/namespaces".to_string(),
            json!({
                "get": op(Action::List, "listCoreV1Namespace", "list objects of kind Namespace", LIST_PARAMS, "io.k8s.api.core.v1.NamespaceList"),
                "parameters": [pretty],
            }),
        ),
        (
            "/api/v1/namespaces/{name}".to_string(),
            json!({
                "get": op(Action::Get, "readCoreV1Namespace", "read the specified Namespace", &[], "io.k8s.api.core.v1.Namespace"),
                "parameters": [name, pretty],
            }),
        ),
    ]
}

/// `authorization.k8s.io/v1` or `authentication.k8s.io/v1`: a `post` per review kind
/// (create-only, nothing stored) and the kinds' schemas from k8s-openapi.
fn review_parts(
    group: &'static str,
    flavor: Flavor,
    paths: &mut Map<String, Value>,
    schemas: &mut Map<String, Value>,
) {
    use crate::reviews::{AUTHENTICATION_GROUP, VERSION, kinds_of};
    use k8s_openapi::api::authentication::v1 as authnv1;
    use k8s_openapi::api::authorization::v1 as authv1;
    let kinds = kinds_of(group);
    let mut generator = match flavor {
        Flavor::V3 => SchemaSettings::openapi3(),
        Flavor::V2 => SchemaSettings::draft07().with(|s| {
            s.meta_schema = None;
            s.transforms.clear();
        }),
    }
    .into_generator();
    if group == AUTHENTICATION_GROUP {
        generator.subschema_for::<authnv1::TokenReview>();
    } else {
        generator.subschema_for::<authv1::SelfSubjectAccessReview>();
        generator.subschema_for::<authv1::SubjectAccessReview>();
        generator.subschema_for::<authv1::LocalSubjectAccessReview>();
        generator.subschema_for::<authv1::SelfSubjectRulesReview>();
    }
    for (name, mut schema) in generator.take_definitions(true) {
        if flavor == Flavor::V2 {
            to_v2_schema(&mut schema);
        }
        if let Some(kind) = kinds
            .iter()
            .find(|k| name == definition_name(group, VERSION, k.kind))
        {
            schema["x-kubernetes-group-version-kind"] = json!([gvk(group, VERSION, kind.kind)]);
        }
        schemas.entry(name).or_insert(schema);
    }
    let tag = if group == AUTHENTICATION_GROUP {
        ("authentication_v1", "AuthenticationV1")
    } else {
        ("authorization_v1", "AuthorizationV1")
    };
    let pretty = param_json(&PRETTY, flavor);
    for k in kinds {
        let def = definition_name(group, VERSION, k.kind);
        let (path, id, mut params) = if k.namespaced {
            (
                format!(
                    "/apis/{group}/{VERSION}/namespaces/{{namespace}}/{}",
                    k.plural
                ),
                format!("createNamespaced{}{}", tag.1, k.kind),
                vec![param_json(&NAMESPACE, flavor)],
            )
        } else {
            (
                format!("/apis/{group}/{VERSION}/{}", k.plural),
                format!("create{}{}", tag.1, k.kind),
                Vec::new(),
            )
        };
        params.push(pretty.clone());
        let op = Operation {
            action: Action::Post,
            operation_id: id,
            description: format!("create{}{}", article(k.kind), k.kind),
            tag: tag.0,
            gvk: gvk(group, VERSION, k.kind),
            params: WRITE_PARAMS,
            body: Body::Object,
            object: &def,
            responses: vec![
                ("200", def.clone()),
                ("201", def.clone()),
                ("202", def.clone()),
            ],
        }
        .to_json(flavor);
        paths.insert(path, json!({"post": op, "parameters": params}));
    }
}

// ---- documents ----

/// Paths and schemas of one group/version (or all of them), before wrapping.
struct Parts {
    paths: Map<String, Value>,
    schemas: Map<String, Value>,
}

fn parts(group_version: Option<(&str, &str)>, flavor: Flavor) -> Parts {
    let mut paths = Map::new();
    let mut schemas = meta_definitions(flavor);
    let wants = |g: &str, v: &str| group_version.is_none_or(|(wg, wv)| wg == g && wv == v);
    if wants("", "v1") {
        for (p, item) in namespace_paths(flavor) {
            paths.insert(p, item);
        }
        let mut generator = match flavor {
            Flavor::V3 => SchemaSettings::openapi3(),
            Flavor::V2 => SchemaSettings::draft07().with(|s| {
                s.meta_schema = None;
                s.transforms.clear();
            }),
        }
        .into_generator();
        generator.subschema_for::<Namespace>();
        for (name, mut schema) in generator.take_definitions(true) {
            if name == "io.k8s.api.core.v1.Namespace" {
                schema["x-kubernetes-group-version-kind"] = json!([gvk("", "v1", "Namespace")]);
            }
            schemas.insert(name, schema);
        }
        schemas.insert(
            "io.k8s.api.core.v1.NamespaceList".into(),
            list_schema("", "v1", "Namespace", "NamespaceList", "namespaces", flavor),
        );
    }
    for g in crate::reviews::GROUPS {
        if wants(g, crate::reviews::VERSION) {
            review_parts(g, flavor, &mut paths, &mut schemas);
        }
    }
    for res in ALL.iter().filter(|r| wants(r.group, r.version)) {
        for (p, item) in resource_paths(res, flavor) {
            paths.insert(p, item);
        }
        schemas.insert(
            definition_name(res.group, res.version, res.kind),
            kind_schema(res, flavor),
        );
        schemas.insert(
            definition_name(res.group, res.version, res.list_kind),
            list_schema(
                res.group,
                res.version,
                res.kind,
                res.list_kind,
                res.plural,
                flavor,
            ),
        );
    }
    let mut sorted: Vec<(String, Value)> = schemas.into_iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    Parts {
        paths,
        schemas: sorted.into_iter().collect(),
    }
}

fn info() -> Value {
    json!({"title": "Substrate", "version": env!("CARGO_PKG_VERSION")})
}

fn build_v3(group: &str, version: &str) -> Value {
    let p = parts(Some((group, version)), Flavor::V3);
    json!({
        "openapi": "3.0.0",
        "info": info(),
        "paths": p.paths,
        "components": {"schemas": p.schemas},
    })
}

fn build_v2() -> Value {
    let p = parts(None, Flavor::V2);
    json!({
        "swagger": "2.0",
        "info": info(),
        "paths": p.paths,
        "definitions": p.schemas,
    })
}

/// The served documents, built once: v3 by path with its hash, and v2 as JSON and as
/// gnostic protobuf ([`crate::openapi_proto`]), each with the hash of its bytes.
struct Documents {
    v3: BTreeMap<String, (Value, String)>,
    v2: Value,
    v2_json: Vec<u8>,
    v2_hash: String,
    v2_proto: Result<(Vec<u8>, String), String>,
}

static DOCUMENTS: LazyLock<Documents> = LazyLock::new(|| {
    let mut gvs: Vec<(&str, &str)> = vec![("", "v1")];
    gvs.extend(crate::reviews::GROUPS.map(|g| (g, crate::reviews::VERSION)));
    for r in ALL {
        if !gvs.contains(&(r.group, r.version)) {
            gvs.push((r.group, r.version));
        }
    }
    let v3 = gvs
        .into_iter()
        .map(|(g, v)| {
            let doc = build_v3(g, v);
            let hash = content_hash(&doc);
            (document_path(g, v), (doc, hash))
        })
        .collect();
    let v2 = build_v2();
    let v2_json = serde_json::to_vec(&v2).unwrap_or_default();
    let v2_hash = bytes_hash(&v2_json);
    let v2_proto = crate::openapi_proto::encode(&v2)
        .map(|bytes| {
            let hash = bytes_hash(&bytes);
            (bytes, hash)
        })
        .map_err(|e| {
            tracing::error!(error = %e, "converting the OpenAPI v2 document to protobuf");
            e.to_string()
        });
    Documents {
        v3,
        v2,
        v2_json,
        v2_hash,
        v2_proto,
    }
});

/// Uppercase hex SHA-512 of the document's JSON, as kube-apiserver hashes its documents.
fn content_hash(doc: &Value) -> String {
    bytes_hash(&serde_json::to_vec(doc).unwrap_or_default())
}

/// Uppercase hex SHA-512 of `bytes` (kube-openapi `computeETag`).
fn bytes_hash(bytes: &[u8]) -> String {
    Sha512::digest(bytes)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect()
}

/// `GET /openapi/v3`: the document of each group/version and where to fetch it.
pub fn v3_index() -> Value {
    let paths: Map<String, Value> = DOCUMENTS
        .v3
        .iter()
        .map(|(path, (_, hash))| {
            (
                path.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={hash}")}),
            )
        })
        .collect();
    json!({"paths": paths})
}

/// `GET /openapi/v3/<path>` (`api/v1`, `apis/<group>/<version>`): the OpenAPI 3.0 document,
/// or `None` for an unknown path.
pub fn v3_document(path: &str) -> Option<Value> {
    let path = path.trim_matches('/');
    DOCUMENTS.v3.get(path).map(|(doc, _)| doc.clone())
}

/// The content hash of a v3 document (the `hash` query parameter of its URL), for `ETag` and
/// caching headers.
pub fn v3_hash(path: &str) -> Option<&'static str> {
    let path = path.trim_matches('/');
    DOCUMENTS.v3.get(path).map(|(_, hash)| hash.as_str())
}

/// `GET /openapi/v2`: one Swagger 2.0 document with every path and definition.
pub fn v2_document() -> Value {
    DOCUMENTS.v2.clone()
}

/// [`v2_document`] serialized once, and the hash of those bytes (its `ETag`).
pub fn v2_json() -> (&'static [u8], &'static str) {
    (&DOCUMENTS.v2_json, &DOCUMENTS.v2_hash)
}

/// `GET /openapi/v2` as protobuf (gnostic `openapi.v2.Document`) and the hash of its bytes,
/// converted once from [`v2_document`]; the error of that conversion if it failed.
pub fn v2_protobuf() -> Result<(&'static [u8], &'static str), &'static str> {
    match &DOCUMENTS.v2_proto {
        Ok((bytes, hash)) => Ok((bytes, hash)),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const METHODS: &[&str] = &["get", "put", "post", "delete", "patch"];

    /// Every `$ref` value in `v`.
    fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    if k == "$ref" {
                        out.extend(x.as_str());
                    } else {
                        refs(x, out);
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }

    fn resolve<'a>(doc: &'a Value, reference: &str) -> Option<&'a Value> {
        doc.pointer(reference.strip_prefix('#')?)
    }

    fn all_v3() -> Vec<(String, Value)> {
        let index = v3_index();
        index["paths"]
            .as_object()
            .unwrap()
            .keys()
            .map(|p| (p.clone(), v3_document(p).unwrap()))
            .collect()
    }

    #[test]
    fn no_dangling_refs() {
        let mut docs = all_v3();
        docs.push(("v2".into(), v2_document()));
        for (name, doc) in &docs {
            let mut found = Vec::new();
            refs(doc, &mut found);
            assert!(!found.is_empty(), "{name}");
            for r in found {
                let prefix = if name == "v2" {
                    "#/definitions/"
                } else {
                    "#/components/schemas/"
                };
                assert!(r.starts_with(prefix), "{name}: {r}");
                assert!(resolve(doc, r).is_some(), "{name}: dangling {r}");
            }
        }
    }

    #[test]
    fn index_lists_documents_with_stable_hashes() {
        let index = v3_index();
        let paths = index["paths"].as_object().unwrap();
        let keys: Vec<&str> = paths.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "api/v1",
                "apis/ate.dev/v1alpha1",
                "apis/authentication.k8s.io/v1",
                "apis/authorization.k8s.io/v1",
                "apis/coordination.k8s.io/v1",
                "apis/rbac.authorization.k8s.io/v1",
                "apis/substrate.ate.dev/v1alpha1"
            ]
        );
        // The reviews: one post each, and the kinds' schemas tagged with their GVK.
        let authz = v3_document("apis/authorization.k8s.io/v1").unwrap();
        let post =
            &authz["paths"]["/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"]["post"];
        assert_eq!(
            post["operationId"],
            "createAuthorizationV1SelfSubjectAccessReview"
        );
        assert_eq!(post["x-kubernetes-action"], "post");
        assert!(
            authz["paths"]["/apis/authorization.k8s.io/v1/namespaces/{namespace}/localsubjectaccessreviews"]["post"]
                .is_object()
        );
        assert_eq!(
            authz["components"]["schemas"]["io.k8s.api.authorization.v1.SelfSubjectRulesReview"]["x-kubernetes-group-version-kind"],
            json!([{"group": "authorization.k8s.io", "kind": "SelfSubjectRulesReview", "version": "v1"}])
        );
        let authn = v3_document("apis/authentication.k8s.io/v1").unwrap();
        let post = &authn["paths"]["/apis/authentication.k8s.io/v1/tokenreviews"]["post"];
        assert_eq!(post["operationId"], "createAuthenticationV1TokenReview");
        assert_eq!(post["tags"], json!(["authentication_v1"]));
        assert_eq!(
            authn["components"]["schemas"]["io.k8s.api.authentication.v1.TokenReview"]["x-kubernetes-group-version-kind"],
            json!([{"group": "authentication.k8s.io", "kind": "TokenReview", "version": "v1"}])
        );
        for (path, entry) in paths {
            let url = entry["serverRelativeURL"].as_str().unwrap();
            let hash = v3_hash(path).unwrap();
            assert_eq!(url, format!("/openapi/v3/{path}?hash={hash}"));
            assert_eq!(hash.len(), 128);
            assert_eq!(content_hash(&build_v3_for(path)), hash, "{path}");
        }
        assert!(v3_document("apis/apps/v1").is_none());
        assert!(v3_document("/apis/ate.dev/v1alpha1").is_some());
    }

    fn build_v3_for(path: &str) -> Value {
        let parts: Vec<&str> = path.split('/').collect();
        match parts.as_slice() {
            ["api", v] => build_v3("", v),
            ["apis", g, v] => build_v3(g, v),
            _ => unreachable!(),
        }
    }

    fn gvk_schema<'a>(
        schemas: &'a Map<String, Value>,
        want: &Value,
    ) -> Option<(&'a String, &'a Value)> {
        schemas.iter().find(|(_, s)| {
            s["x-kubernetes-group-version-kind"]
                .as_array()
                .is_some_and(|l| l.contains(want))
        })
    }

    #[test]
    fn every_kind_has_a_gvk_tagged_schema() {
        let v2 = v2_document();
        for r in ALL {
            let doc = v3_document(&document_path(r.group, r.version)).unwrap();
            let schemas = doc["components"]["schemas"].as_object().unwrap();
            for (kind, def) in [
                (r.kind, definition_name(r.group, r.version, r.kind)),
                (
                    r.list_kind,
                    definition_name(r.group, r.version, r.list_kind),
                ),
            ] {
                let want = gvk(r.group, r.version, kind);
                let (name, _) = gvk_schema(schemas, &want).unwrap_or_else(|| panic!("{kind}"));
                assert_eq!(name, &def);
                let (name, _) = gvk_schema(v2["definitions"].as_object().unwrap(), &want)
                    .unwrap_or_else(|| panic!("v2 {kind}"));
                assert_eq!(name, &def);
            }
            let kind = &schemas[&definition_name(r.group, r.version, r.kind)];
            let body = match r.kind {
                "Role" | "ClusterRole" => "rules",
                "RoleBinding" | "ClusterRoleBinding" => "roleRef",
                _ => "spec",
            };
            for p in ["apiVersion", "kind", "metadata", body] {
                assert!(
                    kind["properties"][p]["description"]
                        .as_str()
                        .is_some_and(|d| !d.is_empty()),
                    "{}.{p}",
                    r.kind
                );
            }
        }
        assert_eq!(
            definition_name("substrate.ate.dev", "v1alpha1", "Actor"),
            "dev.ate.substrate.v1alpha1.Actor"
        );
        assert_eq!(
            definition_name("ate.dev", "v1alpha1", "ActorTemplate"),
            "dev.ate.v1alpha1.ActorTemplate"
        );
        let core = v3_document("api/v1").unwrap();
        assert!(
            gvk_schema(
                core["components"]["schemas"].as_object().unwrap(),
                &gvk("", "v1", "Namespace")
            )
            .is_some()
        );
    }

    #[test]
    fn meta_definitions_are_present() {
        let doc = v3_document("apis/substrate.ate.dev/v1alpha1").unwrap();
        let schemas = &doc["components"]["schemas"];
        for n in [
            "ObjectMeta",
            "ListMeta",
            "Status",
            "DeleteOptions",
            "Patch",
            "WatchEvent",
            "Condition",
            "Time",
            "ManagedFieldsEntry",
            "OwnerReference",
            "LabelSelector",
        ] {
            assert!(schemas.get(format!("{META}.{n}")).is_some(), "{n}");
        }
        let v2 = v2_document();
        assert!(
            v2["definitions"]
                .get(format!("{META}.ObjectMeta"))
                .is_some()
        );
        // Swagger 2.0 has no `nullable`.
        assert!(!v2.to_string().contains("\"nullable\""));
    }

    /// What kubectl's `queryParamVerifierV3` does: the first `patch` operation tagged with the
    /// GVK must list `fieldValidation` among its own parameters. Checked here for every
    /// `post`, `put` and `patch` of every path, in both documents.
    #[test]
    fn field_validation_on_every_write() {
        let mut docs = all_v3();
        docs.push(("v2".into(), v2_document()));
        for (name, doc) in &docs {
            for (path, item) in doc["paths"].as_object().unwrap() {
                for method in ["post", "put", "patch"] {
                    let Some(op) = item.get(method) else { continue };
                    let has = op["parameters"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|p| p["name"] == "fieldValidation" && p["in"] == "query");
                    assert!(has, "{name} {method} {path}");
                }
            }
        }
        for r in ALL {
            let doc = v3_document(&document_path(r.group, r.version)).unwrap();
            let want = gvk(r.group, r.version, r.kind);
            let patches: Vec<&Value> = doc["paths"]
                .as_object()
                .unwrap()
                .values()
                .filter_map(|i| i.get("patch"))
                .filter(|op| op["x-kubernetes-group-version-kind"] == want)
                .collect();
            assert_eq!(
                patches.len(),
                if r.has_status { 2 } else { 1 },
                "{}",
                r.kind
            );
        }
    }

    #[test]
    fn every_operation_is_tagged_and_unique() {
        let mut docs = all_v3();
        docs.push(("v2".into(), v2_document()));
        for (name, doc) in &docs {
            let mut ids = std::collections::BTreeSet::new();
            for (path, item) in doc["paths"].as_object().unwrap() {
                for m in METHODS {
                    let Some(op) = item.get(*m) else { continue };
                    assert!(op["x-kubernetes-action"].is_string(), "{name} {m} {path}");
                    assert!(op["x-kubernetes-group-version-kind"]["kind"].is_string());
                    let id = op["operationId"].as_str().unwrap();
                    assert!(ids.insert(id.to_string()), "{name}: duplicate {id}");
                }
            }
        }
    }

    #[test]
    fn resource_endpoints() {
        let doc = v3_document("apis/substrate.ate.dev/v1alpha1").unwrap();
        let paths = doc["paths"].as_object().unwrap();
        let base = "/apis/substrate.ate.dev/v1alpha1";
        for p in [
            "/actors",
            "/namespaces/{namespace}/actors",
            "/namespaces/{namespace}/actors/{name}",
            "/namespaces/{namespace}/actors/{name}/status",
            "/atespaces",
            "/atespaces/{name}",
            "/atespaces/{name}/status",
            "/workers",
            "/workers/{name}/status",
        ] {
            assert!(paths.contains_key(&format!("{base}{p}")), "{p}");
        }
        let list = &paths[&format!("{base}/namespaces/{{namespace}}/actors")]["get"];
        assert_eq!(
            list["operationId"],
            "listSubstrateAteDevV1alpha1NamespacedActor"
        );
        assert_eq!(list["x-kubernetes-action"], "list");
        let names: Vec<&str> = list["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        for n in [
            "labelSelector",
            "fieldSelector",
            "limit",
            "continue",
            "resourceVersion",
            "resourceVersionMatch",
            "watch",
            "allowWatchBookmarks",
            "sendInitialEvents",
            "timeoutSeconds",
        ] {
            assert!(names.contains(&n), "{n}");
        }
        assert_eq!(
            list["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/dev.ate.substrate.v1alpha1.ActorList"
        );
        let patch = &paths[&format!("{base}/namespaces/{{namespace}}/actors/{{name}}")]["patch"];
        assert!(patch["requestBody"]["content"]["application/merge-patch+json"].is_object());
        let item = &paths[&format!("{base}/namespaces/{{namespace}}/actors/{{name}}")];
        let path_params: Vec<&str> = item["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(path_params, ["name", "namespace", "pretty"]);
        assert!(!paths.contains_key(&format!("{base}/namespaces/{{namespace}}/atespaces")));

        let v2 = v2_document();
        let post = &v2["paths"][&format!("{base}/namespaces/{{namespace}}/actors")]["post"];
        assert_eq!(post["parameters"][0]["in"], "body");
        assert_eq!(
            post["parameters"][0]["schema"]["$ref"],
            "#/definitions/dev.ate.substrate.v1alpha1.Actor"
        );
        assert!(v2["paths"].get("/api/v1/namespaces").is_some());
        assert!(
            v2["paths"]
                .get("/apis/ate.dev/v1alpha1/namespaces/{namespace}/workerpools/{name}")
                .is_some()
        );
    }

    /// Walks a v3 document the way `kubectl explain` does: GVK from the resource's operations,
    /// then the schema carrying it, then fields through `$ref`/`allOf`.
    fn explain<'a>(
        doc: &'a Value,
        group: &str,
        version: &str,
        plural: &str,
        fields: &[&str],
    ) -> &'a Value {
        let paths = &doc["paths"];
        let candidates = [
            format!("/apis/{group}/{version}/{plural}"),
            format!("/apis/{group}/{version}/namespaces/{{namespace}}/{plural}"),
        ];
        let gvk = candidates
            .iter()
            .find_map(|p| paths.get(p).and_then(|i| i.get("get")))
            .map(|op| &op["x-kubernetes-group-version-kind"])
            .unwrap();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        let (_, mut schema) = gvk_schema(schemas, gvk).unwrap();
        for f in fields {
            schema = follow(doc, schema);
            schema = &schema["properties"][*f];
            assert!(!schema.is_null(), "{f}");
        }
        follow(doc, schema)
    }

    fn follow<'a>(doc: &'a Value, mut schema: &'a Value) -> &'a Value {
        loop {
            if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
                schema = resolve(doc, r).unwrap();
            } else if let Some([one]) = schema
                .get("allOf")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
            {
                schema = one;
            } else {
                return schema;
            }
        }
    }

    #[test]
    fn explain_finds_field_descriptions() {
        let doc = v3_document("apis/substrate.ate.dev/v1alpha1").unwrap();
        let spec = explain(&doc, "substrate.ate.dev", "v1alpha1", "actors", &["spec"]);
        assert!(
            spec["properties"]["template"]["description"]
                .as_str()
                .unwrap()
                .contains("ActorTemplate")
        );
        assert_eq!(
            spec["properties"]["idleTimeout"]["description"],
            "How long an `OnDemand` actor may stay idle before it is suspended, as a duration such as `5m` or `1h30m`. Defaults to the system's idle timeout."
        );
        let tpl = explain(
            &doc,
            "substrate.ate.dev",
            "v1alpha1",
            "actors",
            &["spec", "template"],
        );
        assert_eq!(
            tpl["properties"]["name"]["description"],
            "Name of the ActorTemplate."
        );
        let meta = explain(
            &doc,
            "substrate.ate.dev",
            "v1alpha1",
            "actors",
            &["metadata"],
        );
        assert!(meta["properties"]["labels"]["description"].is_string());
        let created = explain(
            &doc,
            "substrate.ate.dev",
            "v1alpha1",
            "atespaces",
            &["metadata", "creationTimestamp"],
        );
        assert_eq!(created["format"], "date-time");

        let doc = v3_document("apis/ate.dev/v1alpha1").unwrap();
        let containers = explain(
            &doc,
            "ate.dev",
            "v1alpha1",
            "actortemplates",
            &["spec", "containers"],
        );
        assert!(containers["items"]["properties"]["image"]["description"].is_string());
    }
}
