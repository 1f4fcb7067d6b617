//! List: selectors, `limit`/`continue` paging with tokens shaped like the API server's, and
//! the list envelope (`<Kind>List`, `metadata.resourceVersion`, items without
//! `kind`/`apiVersion`).

use super::crud::Request;
use super::{json_response, Representation};
use crate::error::ApiError;
use crate::history::Version;
use crate::meta;
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::ObjectKey;
use axum::http::StatusCode;
use axum::response::Response;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};

const CONTINUE_TOO_OLD: &str = "The provided continue parameter is too old to display a \
    consistent list result. You can start a new list without the continue parameter, or use \
    the continue token in this response to retrieve the remainder of the results. Continuing \
    with the provided token results in an inconsistent list - objects that were created, \
    modified, or deleted between the time the first chunk was returned and now may show up \
    in the list.";

/// The label and field selectors of a list, watch or deletecollection.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selection {
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Selection {
    pub fn parse(request: &Request) -> Result<Selection, ApiError> {
        let mut field_text = request
            .query
            .get("fieldSelector")
            .unwrap_or_default()
            .to_string();
        if let Some(name) = &request.path.name {
            field_text = [field_text, format!("metadata.name={name}")]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(",");
        }
        Ok(Selection {
            labels: LabelSelector::parse(request.query.get("labelSelector").unwrap_or_default())?,
            fields: FieldSelector::parse(&field_text, request.resource())?,
        })
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.labels.matches(meta::labels(object)) && self.fields.matches(object)
    }

    /// Whether a version in the watch history is selected; it is parsed only when a field
    /// selector needs more than its labels.
    pub fn matches_version(&self, version: &Version) -> bool {
        self.labels.matches(version.labels.as_ref())
            && (self.fields.is_empty() || self.fields.matches(&version.parse()))
    }

    fn is_everything(&self) -> bool {
        *self == Selection::default()
    }
}

/// An object as a list item: the API server leaves `kind` and `apiVersion` out.
pub fn list_item(object: &Value) -> Value {
    let mut item = object.clone();
    if let Some(map) = item.as_object_mut() {
        map.remove("kind");
        map.remove("apiVersion");
    }
    item
}

pub fn serve(request: &Request) -> Result<Response, ApiError> {
    request.only_subresources(&[])?;
    let selection = Selection::parse(request)?;
    let limit = request.query.number("limit")?.filter(|n| *n > 0);
    let token = request
        .query
        .get("continue")
        .filter(|t| !t.is_empty())
        .map(ContinueToken::decode)
        .transpose()?;
    let txn = request.cluster.store.txn();
    if let Some(token) = &token {
        if !txn.can_resume_from(token.revision) {
            return Err(ApiError::expired(CONTINUE_TOO_OLD));
        }
    }
    if request.query.get("resourceVersionMatch") == Some("Exact") {
        let wanted = request.query.get("resourceVersion").unwrap_or_default();
        let revision: u64 = wanted
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid resource version: {wanted:?}")))?;
        if !txn.can_resume_from(revision) {
            return Err(ApiError::too_old_resource_version(revision, txn.revision()));
        }
    }
    let revision = token.as_ref().map_or(txn.revision(), |t| t.revision);
    let after = token.as_ref().map(|t| &t.after);
    let mut matching = txn
        .list(request.resource(), request.path.namespace.as_deref(), after)
        .into_iter()
        .filter(|object| selection.matches(object));
    let representation = Representation::from_headers(&request.headers);
    let mut items = Vec::new();
    let mut last_key = None;
    for object in matching.by_ref() {
        last_key = Some(ObjectKey::of(&object));
        items.push(match representation {
            Representation::Full => list_item(&object),
            Representation::Metadata => representation.render(&object),
        });
        if limit.is_some_and(|limit| items.len() as i64 >= limit) {
            break;
        }
    }
    let remaining = matching.count();
    let mut list_meta = json!({ "resourceVersion": revision.to_string() });
    if remaining > 0 {
        let next = ContinueToken {
            revision,
            after: last_key.expect("a full page has a last item"),
        };
        list_meta["continue"] = json!(next.encode());
        if selection.is_everything() {
            list_meta["remainingItemCount"] = json!(remaining);
        }
    }
    let (kind, api_version) = match representation {
        Representation::Full => (
            format!("{}List", request.resource().kind()),
            request.resource().api_version(),
        ),
        Representation::Metadata => ("PartialObjectMetadataList".into(), "meta.k8s.io/v1"),
    };
    let body = json!({
        "kind": kind,
        "apiVersion": api_version,
        "metadata": list_meta,
        "items": items,
    });
    Ok(json_response(StatusCode::OK, &body))
}

/// A `continue` token: where the last page ended and at which revision the list began,
/// encoded like the API server's (base64 of `{"v":"meta.k8s.io/v1","rv":N,"start":"..."}`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct ContinueToken {
    revision: u64,
    after: ObjectKey,
}

impl ContinueToken {
    fn encode(&self) -> String {
        let start = if self.after.namespace.is_empty() {
            format!("{}\u{0}", self.after.name)
        } else {
            format!("{}/{}\u{0}", self.after.namespace, self.after.name)
        };
        let json = json!({ "v": "meta.k8s.io/v1", "rv": self.revision, "start": start });
        URL_SAFE_NO_PAD.encode(json.to_string())
    }

    fn decode(text: &str) -> Result<ContinueToken, ApiError> {
        let invalid =
            |why: &str| ApiError::bad_request(format!("continue key is not valid: {why}"));
        let bytes = URL_SAFE_NO_PAD
            .decode(text.trim_end_matches('='))
            .map_err(|_| invalid("illegal base64 data"))?;
        let json: Value = serde_json::from_slice(&bytes).map_err(|_| invalid("not JSON"))?;
        if json["v"] != "meta.k8s.io/v1" {
            return Err(invalid(
                "incorrect encoded start resourceVersion (version meta.k8s.io/v1)",
            ));
        }
        let revision = json["rv"]
            .as_u64()
            .ok_or_else(|| invalid("no resourceVersion"))?;
        let start = json["start"]
            .as_str()
            .ok_or_else(|| invalid("no start key"))?;
        let start = start.trim_end_matches('\u{0}');
        let after = match start.split_once('/') {
            Some((namespace, name)) => ObjectKey::new(namespace, name),
            None => ObjectKey::new("", start),
        };
        Ok(ContinueToken { revision, after })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip() {
        let token = ContinueToken {
            revision: 42,
            after: ObjectKey::new("ci", "job-7"),
        };
        assert_eq!(ContinueToken::decode(&token.encode()).unwrap(), token);
        assert_eq!(ContinueToken::decode("nonsense!").unwrap_err().code, 400);
    }
}
