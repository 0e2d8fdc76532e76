//! Content negotiation: which representation a client accepts (`Accept`) and how its body is
//! encoded (`Content-Type`).

use crate::request::Query;
use crate::status::ApiError;
use crate::table::IncludeObject;

/// The representation of a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Json,
    Yaml,
    /// `meta.k8s.io/v1` Table.
    Table(IncludeObject),
    /// `PartialObjectMetadata` / `PartialObjectMetadataList`.
    PartialMetadata,
}

const ACCEPTED: &[&str] = &[
    "application/json",
    "application/yaml",
    "application/json;as=Table;v=v1;g=meta.k8s.io",
    "application/json;as=PartialObjectMetadata;v=v1;g=meta.k8s.io",
    "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io",
];

struct MediaRange<'a> {
    essence: String,
    params: Vec<(String, &'a str)>,
}

fn parse_range(s: &str) -> MediaRange<'_> {
    let mut parts = s.split(';');
    let essence = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let params = parts
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().trim_matches('"')))
        .collect();
    MediaRange { essence, params }
}

impl MediaRange<'_> {
    fn param(&self, k: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| *v)
    }
}

/// Picks the first representation of `accept` that we can produce.
pub fn negotiate(accept: Option<&str>, query: &Query) -> Result<Output, ApiError> {
    let include = match query.get("includeObject") {
        None | Some("") | Some("Metadata") => IncludeObject::Metadata,
        Some("Object") => IncludeObject::Object,
        Some("None") => IncludeObject::None,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "includeObject: Unsupported value: {other:?}: supported values: \"None\", \"Metadata\", \"Object\""
            )));
        }
    };
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
        return Ok(Output::Json);
    };
    for range in accept.split(',') {
        let r = parse_range(range);
        let json_like = matches!(
            r.essence.as_str(),
            "application/json" | "*/*" | "application/*"
        );
        match r.param("as") {
            None if json_like => return Ok(Output::Json),
            None if r.essence == "application/yaml" => return Ok(Output::Yaml),
            Some("Table")
                if json_like
                    && r.param("g") == Some("meta.k8s.io")
                    && matches!(r.param("v"), Some("v1") | Some("v1beta1")) =>
            {
                return Ok(Output::Table(include));
            }
            Some("PartialObjectMetadata") | Some("PartialObjectMetadataList")
                if json_like
                    && r.param("g") == Some("meta.k8s.io")
                    && matches!(r.param("v"), Some("v1") | Some("v1beta1")) =>
            {
                return Ok(Output::PartialMetadata);
            }
            _ => {}
        }
    }
    Err(ApiError::not_acceptable(ACCEPTED))
}

/// How a PUT/POST body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    Json,
    Yaml,
}

/// PATCH flavours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    Strategic,
    Apply,
}

fn essence(content_type: Option<&str>) -> String {
    content_type
        .map(|c| parse_range(c).essence)
        .unwrap_or_default()
}

/// The body format of a create or update.
pub fn body_format(content_type: Option<&str>) -> Result<BodyFormat, ApiError> {
    match essence(content_type).as_str() {
        "application/json" | "" => Ok(BodyFormat::Json),
        "application/yaml" => Ok(BodyFormat::Yaml),
        other => Err(ApiError::unsupported_media_type(
            other,
            &["application/json", "application/yaml"],
        )),
    }
}

/// Patch types we apply; strategic merge is refused with 415 as for custom resources.
pub const PATCH_TYPES: &[&str] = &[
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/apply-patch+yaml",
];

pub fn patch_type(content_type: Option<&str>) -> Result<PatchType, ApiError> {
    match essence(content_type).as_str() {
        "application/json-patch+json" => Ok(PatchType::Json),
        "application/merge-patch+json" => Ok(PatchType::Merge),
        "application/strategic-merge-patch+json" => Ok(PatchType::Strategic),
        "application/apply-patch+yaml" => Ok(PatchType::Apply),
        other => Err(ApiError::unsupported_media_type(other, PATCH_TYPES)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(a: &str) -> Result<Output, ApiError> {
        negotiate(Some(a), &Query::default())
    }

    #[test]
    fn kubectl_get_asks_for_tables() {
        let a = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(n(a).unwrap(), Output::Table(IncludeObject::Metadata));
        assert_eq!(n("application/json").unwrap(), Output::Json);
        assert_eq!(n("*/*").unwrap(), Output::Json);
        assert_eq!(
            n("application/vnd.kubernetes.protobuf;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json").unwrap(),
            Output::PartialMetadata
        );
        assert_eq!(
            n("application/vnd.kubernetes.protobuf").unwrap_err().code,
            406
        );
    }

    #[test]
    fn patch_types() {
        assert_eq!(
            patch_type(Some("application/merge-patch+json; charset=utf-8")).unwrap(),
            PatchType::Merge
        );
        assert_eq!(
            patch_type(Some("application/apply-patch+yaml")).unwrap(),
            PatchType::Apply
        );
        let e = patch_type(Some("text/plain")).unwrap_err();
        assert_eq!(e.code, 415);
        assert!(e.message.contains("application/apply-patch+yaml"), "{e}");
    }
}
