//! Decoding of request bodies: objects (JSON or YAML), patches (JSON patch, JSON merge patch;
//! strategic merge is refused with 415, as for custom resources) and server-side apply
//! configurations. The handlers ([`crate::api`]) and the fuzz targets (`apiserver/fuzz`,
//! through [`crate::fuzz`]) call the same functions.

use serde_json::Value;

use crate::negotiate::{self, BodyFormat, PatchType};
use crate::registry::PatchBody;
use crate::status::ApiError;

/// An object body (create, update) in `format`.
pub fn object(format: BodyFormat, body: &[u8]) -> Result<Value, ApiError> {
    match format {
        BodyFormat::Json => serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!("couldn't decode the request body as JSON: {e}"))
        }),
        BodyFormat::Yaml => {
            let text = std::str::from_utf8(body)
                .map_err(|_| ApiError::bad_request("the YAML body is not UTF-8"))?;
            serde_saphyr::from_str(text).map_err(|e| {
                ApiError::bad_request(format!("couldn't decode the request body as YAML: {e}"))
            })
        }
    }
}

/// A create or update body of `res`: JSON or YAML, or protobuf for the built-in kinds that
/// kubectl's typed commands send so ([`crate::protobuf`]).
pub fn object_of(
    res: &crds::resources::ResourceInfo,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Value, ApiError> {
    let essence = content_type
        .and_then(|c| c.split(';').next())
        .map(|c| c.trim().to_ascii_lowercase());
    if essence.as_deref() == Some(crate::protobuf::MEDIA_TYPE) && crate::protobuf::supported(res) {
        return crate::protobuf::decode_object(res, body);
    }
    object(negotiate::body_format(content_type)?, body)
}

/// A PATCH body of `res`: as [`patch`], and strategic merge patches for the built-in kinds
/// ([`crate::strategic`]).
pub fn patch_of(
    res: &crds::resources::ResourceInfo,
    ptype: PatchType,
    content_type: &str,
    body: &[u8],
) -> Result<PatchBody, ApiError> {
    if ptype == PatchType::Strategic && crate::protobuf::supported(res) {
        return match patch(PatchType::Merge, content_type, body)? {
            PatchBody::Merge(v) => Ok(PatchBody::Strategic(v)),
            other => Ok(other),
        };
    }
    patch(ptype, content_type, body)
}

/// A PATCH body of type `ptype` (`content_type` names it in a 415). Apply patches are
/// decoded by [`apply_config`].
pub fn patch(ptype: PatchType, content_type: &str, body: &[u8]) -> Result<PatchBody, ApiError> {
    match ptype {
        PatchType::Json => Ok(PatchBody::Json(serde_json::from_slice(body).map_err(
            |e| ApiError::bad_request(format!("the JSON patch is not valid: {e}")),
        )?)),
        PatchType::Merge => {
            let v: Value = serde_json::from_slice(body).map_err(|e| {
                ApiError::bad_request(format!("the merge patch is not valid JSON: {e}"))
            })?;
            if !v.is_object() {
                return Err(ApiError::bad_request(
                    "the merge patch must be a JSON object",
                ));
            }
            Ok(PatchBody::Merge(v))
        }
        PatchType::Strategic | PatchType::Apply => Err(ApiError::unsupported_media_type(
            content_type,
            negotiate::PATCH_TYPES,
        )),
    }
}

/// A server-side apply configuration (`application/apply-patch+yaml`): YAML, or JSON (which
/// kubectl and controller-runtime send; parsed as such first, several times cheaper).
pub fn apply_config(body: &[u8]) -> Result<Value, ApiError> {
    match serde_json::from_slice(body) {
        Ok(v) => Ok(v),
        Err(_) => {
            let text = std::str::from_utf8(body)
                .map_err(|_| ApiError::bad_request("error decoding YAML: the body is not UTF-8"))?;
            serde_saphyr::from_str(text)
                .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
        }
    }
}
