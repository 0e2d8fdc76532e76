//! Server-side printing: `meta.k8s.io/v1` `Table` and `PartialObjectMetadata`.
//!
//! `kubectl get` asks for `Accept: application/json;as=Table;v=v1;g=meta.k8s.io` and prints the
//! cells it receives. This module builds those tables the way kube-apiserver's CRD table
//! convertor (`apiextensions-apiserver/pkg/registry/customresource/tableconvertor`) does:
//!
//! - columns: `Name` (format `name`), then the printer columns of the CRD with their type,
//!   format, description (or `Custom resource definition column (in JSONPath format): <path>`)
//!   and priority;
//! - cells: the object's name, then each column's JSONPath evaluated on the object (first
//!   result only). `string` columns print the value as text (objects and arrays as JSON),
//!   `integer`/`number`/`boolean` columns give JSON numbers/booleans, `date` columns give the age
//!   (`5m`, `3h2m`, `<unknown>`, `<invalid>`). A missing value or a type mismatch is `null`,
//!   which kubectl prints as `<none>`;
//! - each row's `object` is, per `includeObject`, the `PartialObjectMetadata` of the object
//!   (default), the whole object, or `null`.
//!
//! kubectl relies on `row.object`: `-A` reads the namespace from it, `--show-labels`/`-L` the
//! labels, `--sort-by` the whole object (it asks for `includeObject=Object`).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use crds::resources::{ALL, Kind, ResourceInfo};
use serde_json::{Map, Value, json};

/// The description of `metadata.name`, used for the `Name` column.
const NAME_DESCRIPTION: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";

const META_API_VERSION: &str = "meta.k8s.io/v1";

/// What a table row carries in `object` (query parameter `includeObject`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum IncludeObject {
    /// `None`: no object (`"object": null`).
    None,
    /// `Metadata` (the default): a `PartialObjectMetadata`.
    #[default]
    Metadata,
    /// `Object`: the whole object.
    Object,
}

impl IncludeObject {
    /// Parses the query parameter; an empty value is the default. `None` for anything else
    /// (kube-apiserver answers 400 `unrecognized includeObject value: "<v>"`).
    pub fn from_param(value: &str) -> Option<Self> {
        match value {
            "" | "Metadata" => Some(Self::Metadata),
            "None" => Some(Self::None),
            "Object" => Some(Self::Object),
            _ => None,
        }
    }
}

/// A printer column, prepared once per kind: its `TableColumnDefinition` and parsed path.
#[derive(Clone)]
struct Column {
    definition: Value,
    column_type: String,
    /// `None` when the path does not parse: every cell is then `null`.
    path: Option<JsonPath>,
}

fn prepare_columns(res: &ResourceInfo) -> Vec<Column> {
    res.printer_columns()
        .into_iter()
        .map(|c| {
            let description = match c.description.as_deref() {
                Some(d) if !d.is_empty() => d.to_string(),
                _ => format!(
                    "Custom resource definition column (in JSONPath format): {}",
                    c.json_path
                ),
            };
            Column {
                definition: json!({
                    "name": c.name,
                    "type": c.type_,
                    "format": c.format.unwrap_or_default(),
                    "description": description,
                    "priority": c.priority.unwrap_or(0),
                }),
                path: JsonPath::parse(&c.json_path).ok(),
                column_type: c.type_,
            }
        })
        .collect()
}

/// Columns of every served kind; `printer_columns()` generates the whole CRD, too slow to run
/// per row.
static COLUMNS: LazyLock<HashMap<Kind, Vec<Column>>> = LazyLock::new(|| {
    ALL.iter()
        .map(|r| (r.kind_id, prepare_columns(r)))
        .collect()
});

fn columns(res: &ResourceInfo) -> Cow<'static, [Column]> {
    match COLUMNS.get(&res.kind_id) {
        Some(c) => Cow::Borrowed(c.as_slice()),
        None => Cow::Owned(prepare_columns(res)),
    }
}

/// The `TableColumnDefinition`s of `res`: `Name`, then its printer columns.
pub fn column_definitions(res: &ResourceInfo) -> Vec<Value> {
    if let Some(cols) = rbac_columns(res) {
        return cols;
    }
    let mut cols = vec![json!({
        "name": "Name",
        "type": "string",
        "format": "name",
        "description": NAME_DESCRIPTION,
        "priority": 0,
    })];
    cols.extend(columns(res).iter().map(|c| c.definition.clone()));
    cols
}

/// One `TableRow` for `obj`.
pub fn row(res: &ResourceInfo, obj: &Value, include: IncludeObject, now: jiff::Timestamp) -> Value {
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let mut cells = vec![Value::String(name.to_string())];
    if let Some(more) = rbac_cells(res, obj, now) {
        cells.extend(more);
    } else {
        for c in columns(res).iter() {
            cells.push(match c.path.as_ref().and_then(|p| p.first(obj)) {
                Some(v) => cell(&c.column_type, v, now),
                None => Value::Null,
            });
        }
    }
    let object = match include {
        IncludeObject::None => Value::Null,
        IncludeObject::Metadata => partial_object_metadata(obj),
        IncludeObject::Object => obj.clone(),
    };
    json!({"cells": cells, "object": object})
}

/// A `meta.k8s.io/v1` `Table` of `objects`. `list_metadata` is the `ListMeta` of the answer
/// (`resourceVersion`, `continue`, `remainingItemCount`); empty entries are dropped.
/// `with_columns` is false for watch events after the first, which carry no column
/// definitions.
pub fn table(
    res: &ResourceInfo,
    objects: &[&Value],
    include: IncludeObject,
    list_metadata: Value,
    with_columns: bool,
    now: jiff::Timestamp,
) -> Value {
    let columns = if with_columns {
        column_definitions(res)
    } else {
        Vec::new()
    };
    let rows: Vec<Value> = objects.iter().map(|o| row(res, o, include, now)).collect();
    json!({
        "kind": "Table",
        "apiVersion": META_API_VERSION,
        "metadata": list_meta(list_metadata),
        "columnDefinitions": columns,
        "rows": rows,
    })
}

const CREATION_DESCRIPTION: &str = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";
const ROLE_REF_DESCRIPTION: &str = "RoleRef can reference a Role in the current namespace or a ClusterRole in the global namespace. If the RoleRef cannot be resolved, the Authorizer must return an error.";

fn is_rbac(res: &ResourceInfo) -> Option<bool> {
    match res.kind_id {
        Kind::Role | Kind::ClusterRole => Some(false),
        Kind::RoleBinding | Kind::ClusterRoleBinding => Some(true),
        _ => None,
    }
}

/// kube-apiserver's own printers of the RBAC kinds (`pkg/printers/internalversion`): roles
/// `Name`, `Created At` (RFC 3339); bindings `Name`, `Role` (`Kind/name`), `Age`, and the
/// wide `Users`, `Groups`, `ServiceAccounts`.
fn rbac_columns(res: &ResourceInfo) -> Option<Vec<Value>> {
    let col = |name: &str, ty: &str, description: &str, priority: i64| {
        json!({"name": name, "type": ty, "format": if name == "Name" { "name" } else { "" },
               "description": description, "priority": priority})
    };
    let name = col("Name", "string", NAME_DESCRIPTION, 0);
    Some(if is_rbac(res)? {
        vec![
            name,
            col("Role", "string", ROLE_REF_DESCRIPTION, 0),
            col("Age", "string", CREATION_DESCRIPTION, 0),
            col("Users", "string", "Users in the roleBinding", 1),
            col("Groups", "string", "Groups in the roleBinding", 1),
            col(
                "ServiceAccounts",
                "string",
                "ServiceAccounts in the roleBinding",
                1,
            ),
        ]
    } else {
        vec![name, col("Created At", "date", CREATION_DESCRIPTION, 0)]
    })
}

/// The cells after `Name` of an RBAC object (see [`rbac_columns`]).
fn rbac_cells(res: &ResourceInfo, obj: &Value, now: jiff::Timestamp) -> Option<Vec<Value>> {
    let created = obj
        .pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !is_rbac(res)? {
        return Some(vec![json!(created)]);
    }
    let s = |v: &Value, p: &str| {
        v.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let role = format!("{}/{}", s(obj, "/roleRef/kind"), s(obj, "/roleRef/name"));
    let (mut users, mut groups, mut sas) = (Vec::new(), Vec::new(), Vec::new());
    for subject in obj
        .get("subjects")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = s(subject, "/name");
        match s(subject, "/kind").as_str() {
            "User" => users.push(name),
            "Group" => groups.push(name),
            "ServiceAccount" => sas.push(format!("{}/{name}", s(subject, "/namespace"))),
            _ => {}
        }
    }
    Some(vec![
        json!(role),
        json!(age(created, now)),
        json!(users.join(", ")),
        json!(groups.join(", ")),
        json!(sas.join(", ")),
    ])
}

/// `metav1.PartialObjectMetadata` of an object: its whole `metadata`.
pub fn partial_object_metadata(obj: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": META_API_VERSION,
        "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

/// `metav1.PartialObjectMetadataList` of `items`.
pub fn partial_object_metadata_list(items: &[&Value], list_metadata: Value) -> Value {
    let items: Vec<Value> = items.iter().map(|o| partial_object_metadata(o)).collect();
    json!({
        "kind": "PartialObjectMetadataList",
        "apiVersion": META_API_VERSION,
        "metadata": list_meta(list_metadata),
        "items": items,
    })
}

/// Drops null and empty-string entries, as `omitempty` does for `ListMeta`.
fn list_meta(meta: Value) -> Value {
    match meta {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(_, v)| !v.is_null() && v.as_str() != Some(""))
                .collect::<Map<_, _>>(),
        ),
        _ => json!({}),
    }
}

/// `cellForJSONValue` of the CRD table convertor, plus its `string` branch (JSONPath printing).
fn cell(column_type: &str, value: &Value, now: jiff::Timestamp) -> Value {
    match (column_type, value) {
        (_, Value::Null) => Value::Null,
        ("string", Value::String(s)) => Value::String(s.clone()),
        ("string", Value::Number(n)) => Value::String(n.to_string()),
        ("string", Value::Bool(b)) => Value::String(b.to_string()),
        ("string", v) => Value::String(v.to_string()),
        ("integer", Value::Number(n)) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => json!(i),
            // Go converts float64 to int64 by truncation (saturating here).
            (None, Some(f)) => json!(f.trunc() as i64),
            _ => Value::Null,
        },
        ("number", Value::Number(n)) => n.as_f64().map_or(Value::Null, |f| json!(f)),
        ("boolean", Value::Bool(b)) => Value::Bool(*b),
        ("date", Value::String(s)) => Value::String(age(s, now)),
        _ => Value::Null,
    }
}

/// `metav1.Time.UnmarshalQueryParameter` then `ConvertToHumanReadableDateType`.
fn age(timestamp: &str, now: jiff::Timestamp) -> String {
    if timestamp.is_empty() || timestamp == "null" {
        return "<unknown>".to_string();
    }
    let Ok(t) = timestamp.parse::<jiff::Timestamp>() else {
        return "<invalid>".to_string();
    };
    // Go's zero time.Time: 0001-01-01T00:00:00Z.
    if t.as_second() == -62_135_596_800 && t.subsec_nanosecond() == 0 {
        return "<unknown>".to_string();
    }
    human_duration_nanos(now.as_nanosecond() - t.as_nanosecond())
}

/// `k8s.io/apimachinery/pkg/util/duration.HumanDuration`: ~2-3 significant figures
/// (`45s`, `3m7s`, `15m`, `3h2m`, `20h`, `3d4h`, `30d`, `2y10d`, `9y`).
pub fn human_duration(d: Duration) -> String {
    human_duration_nanos(i128::try_from(d.as_nanos()).unwrap_or(i128::MAX))
}

/// [`human_duration`] on a signed duration: up to 2s in the future counts as `0s`, further
/// is `<invalid>`.
fn human_duration_nanos(nanos: i128) -> String {
    const SEC: i128 = 1_000_000_000;
    let seconds = nanos / SEC;
    if seconds < -1 {
        return "<invalid>".to_string();
    }
    if seconds < 0 {
        return "0s".to_string();
    }
    if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = nanos / (60 * SEC);
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = nanos / (3600 * SEC);
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        return if dy == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{dy}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

// ---- JSONPath: the subset printer columns use ----

/// A filter comparison inside `[?(...)]`.
#[derive(Debug, Clone, PartialEq)]
struct Filter {
    /// Path relative to the element (`@.type` → `["type"]`).
    path: Vec<String>,
    op: FilterOp,
    literal: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FilterOp {
    Eq,
    Ne,
}

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Field(String),
    Index(i64),
    Wildcard,
    Filter(Filter),
}

/// A parsed JSONPath such as `.status.conditions[?(@.type=="Ready")].status`.
#[derive(Debug, Clone, PartialEq)]
struct JsonPath {
    steps: Vec<Step>,
}

impl JsonPath {
    /// Parses `.a.b`, `.a[0]`, `.a[-1]`, `.a[*]`, `['a.b']`, `.a[?(@.k=="v")]` (also `!=` and
    /// number/bool literals), with or without the surrounding `{}`; `\.` escapes a dot in a
    /// field name.
    fn parse(path: &str) -> Result<Self, String> {
        let p = path.trim();
        let p = p
            .strip_prefix('{')
            .and_then(|p| p.strip_suffix('}'))
            .unwrap_or(p);
        let p = p.strip_prefix('$').unwrap_or(p);
        let chars: Vec<char> = p.chars().collect();
        let mut steps = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            match chars[i] {
                '.' => {
                    i += 1;
                    let mut name = String::new();
                    while i < chars.len() && chars[i] != '.' && chars[i] != '[' {
                        if chars[i] == '\\' && i + 1 < chars.len() {
                            i += 1;
                        }
                        name.push(chars[i]);
                        i += 1;
                    }
                    match name.as_str() {
                        "" => return Err(format!("empty field name in {path:?}")),
                        "*" => steps.push(Step::Wildcard),
                        _ => steps.push(Step::Field(name)),
                    }
                }
                '[' => {
                    let close = find_bracket_end(&chars, i)
                        .ok_or_else(|| format!("unclosed [ in {path:?}"))?;
                    let inner: String = chars[i + 1..close].iter().collect();
                    steps.push(parse_bracket(inner.trim())?);
                    i = close + 1;
                }
                c => return Err(format!("unexpected {c:?} in {path:?}")),
            }
        }
        Ok(Self { steps })
    }

    /// The first value the path yields on `root`, if any.
    fn first<'a>(&self, root: &'a Value) -> Option<&'a Value> {
        let mut current = vec![root];
        for step in &self.steps {
            let mut next = Vec::new();
            for v in current {
                match step {
                    Step::Field(name) => next.extend(v.get(name.as_str())),
                    Step::Index(i) => {
                        if let Some(items) = v.as_array() {
                            let len = i64::try_from(items.len()).unwrap_or(i64::MAX);
                            let idx = if *i < 0 { len + i } else { *i };
                            next.extend(usize::try_from(idx).ok().and_then(|i| items.get(i)));
                        }
                    }
                    Step::Wildcard => match v {
                        Value::Array(items) => next.extend(items.iter()),
                        Value::Object(m) => next.extend(m.values()),
                        _ => {}
                    },
                    Step::Filter(f) => {
                        if let Some(items) = v.as_array() {
                            next.extend(items.iter().filter(|item| f.accepts(item)));
                        }
                    }
                }
            }
            current = next;
        }
        current.into_iter().next()
    }
}

impl Filter {
    fn accepts(&self, item: &Value) -> bool {
        let mut v = item;
        for p in &self.path {
            match v.get(p.as_str()) {
                Some(x) => v = x,
                None => return false,
            }
        }
        let equal = match (v, &self.literal) {
            (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
            (a, b) => a == b,
        };
        match self.op {
            FilterOp::Eq => equal,
            FilterOp::Ne => !equal,
        }
    }
}

/// Index of the `]` closing the `[` at `open`, skipping quoted strings.
fn find_bracket_end(chars: &[char], open: usize) -> Option<usize> {
    let mut quote: Option<char> = None;
    let mut depth = 0;
    for (j, &c) in chars.iter().enumerate().skip(open) {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '[') => depth += 1,
            (None, ']') => {
                depth -= 1;
                if depth == 0 {
                    return Some(j);
                }
            }
            _ => {}
        }
    }
    None
}

fn parse_bracket(inner: &str) -> Result<Step, String> {
    if inner == "*" {
        return Ok(Step::Wildcard);
    }
    if let Some(name) = unquote(inner) {
        return Ok(Step::Field(name));
    }
    if let Ok(i) = inner.parse::<i64>() {
        return Ok(Step::Index(i));
    }
    let expr = inner
        .strip_prefix('?')
        .map(str::trim)
        .and_then(|e| e.strip_prefix('('))
        .and_then(|e| e.strip_suffix(')'))
        .ok_or_else(|| format!("unsupported JSONPath element [{inner}]"))?;
    let (lhs, op, rhs) = if let Some((l, r)) = expr.split_once("==") {
        (l, FilterOp::Eq, r)
    } else if let Some((l, r)) = expr.split_once("!=") {
        (l, FilterOp::Ne, r)
    } else {
        return Err(format!("unsupported filter {expr:?}"));
    };
    let lhs = lhs.trim();
    let rel = lhs
        .strip_prefix('@')
        .ok_or_else(|| format!("filter must start with @: {expr:?}"))?;
    let path: Vec<String> = rel
        .split('.')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    let rhs = rhs.trim();
    let literal = match unquote(rhs) {
        Some(s) => Value::String(s),
        None => serde_json::from_str::<Value>(rhs)
            .map_err(|_| format!("unsupported filter literal {rhs:?}"))?,
    };
    Ok(Step::Filter(Filter { path, op, literal }))
}

fn unquote(s: &str) -> Option<String> {
    for q in ['\'', '"'] {
        if let Some(inner) = s.strip_prefix(q).and_then(|s| s.strip_suffix(q)) {
            return Some(inner.to_string());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crds::resources::{ACTOR_TEMPLATES, ACTORS, ALL, WORKER_POOLS};

    fn now() -> jiff::Timestamp {
        "2025-01-01T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn human_duration_matches_apimachinery() {
        const MS: i128 = 1_000_000;
        const S: i128 = 1000 * MS;
        const M: i128 = 60 * S;
        const H: i128 = 60 * M;
        const D: i128 = 24 * H;
        const Y: i128 = 365 * D;
        // TestHumanDuration and TestHumanDurationBoundaries of apimachinery's duration_test.go.
        let cases: &[(i128, &str)] = &[
            (S, "1s"),
            (70 * S, "70s"),
            (190 * S, "3m10s"),
            (70 * M, "70m"),
            (47 * H, "47h"),
            (49 * H, "2d1h"),
            ((8 * 24 + 2) * H, "8d"),
            (367 * D, "367d"),
            (2 * Y + 25 * H, "2y1d"),
            (8 * Y + 2 * H, "8y"),
            (-2 * S, "<invalid>"),
            (-2 * S + 1, "0s"),
            (0, "0s"),
            (S - MS, "0s"),
            (2 * M - MS, "119s"),
            (2 * M, "2m"),
            (2 * M + S, "2m1s"),
            (10 * M - MS, "9m59s"),
            (10 * M, "10m"),
            (10 * M + S, "10m"),
            (3 * H - MS, "179m"),
            (3 * H, "3h"),
            (3 * H + M, "3h1m"),
            (8 * H - MS, "7h59m"),
            (8 * H, "8h"),
            (8 * H + 59 * M, "8h"),
            (2 * D - MS, "47h"),
            (2 * D, "2d"),
            (2 * D + H, "2d1h"),
            (8 * D - MS, "7d23h"),
            (8 * D, "8d"),
            (8 * D + 23 * H, "8d"),
            (2 * Y - MS, "729d"),
            (2 * Y, "2y"),
            (2 * Y + 23 * H, "2y"),
            (2 * Y + 23 * H + 59 * M, "2y"),
            (2 * Y + D - MS, "2y"),
            (2 * Y + D, "2y1d"),
            (3 * Y, "3y"),
            (7 * Y, "7y"),
            (8 * Y - MS, "7y364d"),
            (8 * Y, "8y"),
            (8 * Y + 364 * D, "8y"),
            (9 * Y, "9y"),
        ];
        for (nanos, want) in cases {
            assert_eq!(human_duration_nanos(*nanos), *want, "{nanos}ns");
        }
        assert_eq!(human_duration(Duration::from_secs(190)), "3m10s");
        assert_eq!(
            human_duration(Duration::MAX),
            format!("{}y", u64::MAX / (365 * 24 * 3600))
        );
    }

    #[test]
    fn jsonpath_subset() {
        let obj = json!({
            "a": {"b": "x", "n": 3, "dotted.key": "d"},
            "list": [{"type": "A", "status": "1"}, {"type": "Ready", "status": "True", "n": 2}],
        });
        let get = |p: &str| JsonPath::parse(p).unwrap().first(&obj).cloned();
        assert_eq!(get(".a.b"), Some(json!("x")));
        assert_eq!(get("{.a.n}"), Some(json!(3)));
        assert_eq!(get(".list[0].type"), Some(json!("A")));
        assert_eq!(get(".list[-1].type"), Some(json!("Ready")));
        assert_eq!(get(".list[*].type"), Some(json!("A")));
        assert_eq!(
            get(".list[?(@.type==\"Ready\")].status"),
            Some(json!("True"))
        );
        assert_eq!(get(".list[?(@.type=='Ready')].status"), Some(json!("True")));
        assert_eq!(get(".list[?(@.type!=\"A\")].status"), Some(json!("True")));
        assert_eq!(get(".list[?(@.n==2)].type"), Some(json!("Ready")));
        assert_eq!(get(".a['dotted.key']"), Some(json!("d")));
        assert_eq!(get(".a.dotted\\.key"), Some(json!("d")));
        assert_eq!(get(".a.missing"), None);
        assert_eq!(get(".list[5]"), None);
        assert_eq!(get(".list[?(@.type==\"Nope\")].status"), None);
        assert!(JsonPath::parse(".a[").is_err());
    }

    #[test]
    fn columns_follow_the_crd_convertor() {
        let cols = column_definitions(&ACTORS);
        assert_eq!(cols[0]["name"], "Name");
        assert_eq!(cols[0]["format"], "name");
        assert!(
            cols[0]["description"]
                .as_str()
                .unwrap()
                .starts_with("Name must be unique")
        );
        let names: Vec<&str> = cols.iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(
            names,
            [
                "Name",
                "Phase",
                "Worker",
                "Age",
                "Template",
                "Activation",
                "Address",
                "Last Active",
                "Image"
            ]
        );
        assert_eq!(cols[3]["type"], "date");
        assert_eq!(cols[3]["priority"], 0);
        assert_eq!(cols[4]["priority"], 1);
        assert_eq!(cols[1]["format"], "");
        assert_eq!(
            cols[1]["description"],
            "Custom resource definition column (in JSONPath format): .status.phase"
        );
        for r in ALL.iter().filter(|r| is_rbac(r).is_none()) {
            assert_eq!(
                column_definitions(r).len(),
                r.printer_columns().len() + 1,
                "{}",
                r.kind
            );
        }
    }

    #[test]
    fn rbac_tables_are_kube_apiserver_ones() {
        use crds::resources::{ROLE_BINDINGS, ROLES};
        let now: jiff::Timestamp = "2025-01-01T12:00:00Z".parse().unwrap();
        let role = json!({"metadata": {"name": "r", "creationTimestamp": "2025-01-01T11:55:00Z"}});
        let names = |res| -> Vec<String> {
            column_definitions(res)
                .iter()
                .map(|c| c["name"].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(names(&ROLES), ["Name", "Created At"]);
        assert_eq!(
            row(&ROLES, &role, IncludeObject::None, now)["cells"],
            json!(["r", "2025-01-01T11:55:00Z"])
        );
        assert_eq!(
            names(&ROLE_BINDINGS),
            ["Name", "Role", "Age", "Users", "Groups", "ServiceAccounts"]
        );
        let b = json!({"metadata": {"name": "b", "creationTimestamp": "2025-01-01T11:55:00Z"},
            "roleRef": {"kind": "ClusterRole", "name": "edit"},
            "subjects": [{"kind": "User", "name": "alice"}, {"kind": "User", "name": "bob"},
                         {"kind": "Group", "name": "team-a"}, {"kind": "ServiceAccount", "name": "bot", "namespace": "team-a"}]});
        assert_eq!(
            row(&ROLE_BINDINGS, &b, IncludeObject::None, now)["cells"],
            json!([
                "b",
                "ClusterRole/edit",
                "5m",
                "alice, bob",
                "team-a",
                "team-a/bot"
            ])
        );
    }

    fn actor() -> Value {
        json!({
            "apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Actor",
            "metadata": {"name": "a1", "namespace": "team-a", "labels": {"app": "web"},
                         "creationTimestamp": "2025-01-01T11:55:00Z", "resourceVersion": "7"},
            "spec": {"template": {"name": "counter"}, "activation": "OnDemand"},
            "status": {"phase": "Running", "lastActiveTime": "2025-01-01T09:00:00Z",
                       "image": "r.io/counter@sha256:00ff"},
        })
    }

    #[test]
    fn rows_and_include_object() {
        let a = actor();
        let r = row(&ACTORS, &a, IncludeObject::Metadata, now());
        assert_eq!(
            r["cells"],
            json!([
                "a1",
                "Running",
                null,
                "5m",
                "counter",
                "OnDemand",
                null,
                "3h",
                "r.io/counter@sha256:00ff"
            ])
        );
        assert_eq!(
            r["object"],
            json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                   "metadata": a["metadata"]})
        );
        assert_eq!(row(&ACTORS, &a, IncludeObject::Object, now())["object"], a);
        assert_eq!(
            row(&ACTORS, &a, IncludeObject::None, now())["object"],
            Value::Null
        );
    }

    #[test]
    fn cells_by_type() {
        let pool = json!({"metadata": {"name": "p"}, "spec": {"replicas": 3, "image": "img"},
                          "status": {"readyReplicas": 2.0, "freeReplicas": 1}});
        let r = row(&WORKER_POOLS, &pool, IncludeObject::None, now());
        // Integer columns stay numbers; missing values (boundReplicas, creationTimestamp)
        // are absent.
        assert_eq!(r["cells"], json!(["p", 3, 2, 1, null, null, "img"]));

        let tpl = json!({"metadata": {"name": "t", "creationTimestamp": "bogus"},
            "spec": {"workerPoolRef": {"name": "p"}},
            "status": {"conditions": [{"type": "Other", "status": "False"},
                                      {"type": "Ready", "status": "True"}]}});
        let r = row(&ACTOR_TEMPLATES, &tpl, IncludeObject::None, now());
        assert_eq!(r["cells"], json!(["t", "p", "True", "<invalid>", null]));

        assert_eq!(cell("string", &json!({"a": 1}), now()), json!("{\"a\":1}"));
        assert_eq!(cell("string", &json!(5), now()), json!("5"));
        assert_eq!(cell("integer", &json!("5"), now()), Value::Null);
        assert_eq!(cell("integer", &json!(5.7), now()), json!(5));
        assert_eq!(cell("number", &json!(5), now()), json!(5.0));
        assert_eq!(cell("boolean", &json!(true), now()), json!(true));
        assert_eq!(cell("date", &json!(""), now()), json!("<unknown>"));
        assert_eq!(
            cell("date", &json!("0001-01-01T00:00:00Z"), now()),
            json!("<unknown>")
        );
        assert_eq!(
            cell("date", &json!("2025-01-01T12:00:01Z"), now()),
            json!("0s")
        );
        assert_eq!(
            cell("date", &json!("2025-01-02T12:00:00Z"), now()),
            json!("<invalid>")
        );
        assert_eq!(cell("date", &json!(5), now()), Value::Null);
        assert_eq!(cell("string", &Value::Null, now()), Value::Null);
    }

    #[test]
    fn table_shape() {
        let a = actor();
        let t = table(
            &ACTORS,
            &[&a],
            IncludeObject::Metadata,
            json!({"resourceVersion": "9", "continue": ""}),
            true,
            now(),
        );
        assert_eq!(t["kind"], "Table");
        assert_eq!(t["apiVersion"], "meta.k8s.io/v1");
        assert_eq!(t["metadata"], json!({"resourceVersion": "9"}));
        assert_eq!(t["columnDefinitions"].as_array().unwrap().len(), 9);
        assert_eq!(t["rows"].as_array().unwrap().len(), 1);
        let t = table(&ACTORS, &[&a], IncludeObject::None, json!({}), false, now());
        assert_eq!(t["columnDefinitions"], json!([]));
    }

    #[test]
    fn partial_metadata_list() {
        let a = actor();
        let l = partial_object_metadata_list(&[&a, &a], json!({"resourceVersion": "3"}));
        assert_eq!(l["kind"], "PartialObjectMetadataList");
        assert_eq!(l["metadata"]["resourceVersion"], "3");
        assert_eq!(l["items"][1]["kind"], "PartialObjectMetadata");
        assert_eq!(l["items"][1]["metadata"]["name"], "a1");
    }

    #[test]
    fn include_object_param() {
        assert_eq!(IncludeObject::from_param(""), Some(IncludeObject::Metadata));
        assert_eq!(
            IncludeObject::from_param("Object"),
            Some(IncludeObject::Object)
        );
        assert_eq!(IncludeObject::from_param("None"), Some(IncludeObject::None));
        assert_eq!(IncludeObject::from_param("all"), None);
        assert_eq!(IncludeObject::default(), IncludeObject::Metadata);
    }
}
