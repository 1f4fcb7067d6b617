//! Watch: a chunked stream of newline-delimited `{"type","object"}` events. It starts from
//! the current state (no or `0` resourceVersion, or `sendInitialEvents`) or replays the
//! history after a resourceVersion; a resourceVersion older than the history yields an
//! `ERROR` event with a 410 `Expired` status, as the real server sends. Selectors apply to
//! both the old and new object, so an object that stops matching arrives as `DELETED`.

use super::crud::Request;
use super::list::Selection;
use super::{json_response, Representation};
use crate::error::{ApiError, Cause};
use crate::history::{Recorded, Version};
use crate::resource::Resource;
use crate::store::ChangeKind;
use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::Response;
use rand::Rng;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::{interval_at, sleep_until, Instant};

/// What one watch sends.
struct Watch {
    resource: Resource,
    namespace: Option<String>,
    selection: Selection,
    representation: Representation,
    bookmarks: bool,
}

pub async fn serve(request: Request) -> Result<Response, ApiError> {
    request.only_subresources(&[])?;
    let query = &request.query;
    let send_initial = query.flag("sendInitialEvents");
    let bookmarks = query.flag("allowWatchBookmarks");
    let version_match = query.get("resourceVersionMatch").unwrap_or_default();
    let forbidden = |field: &str, why: &str| {
        ApiError::invalid(request.resource(), "", &[Cause::forbidden(field, why)])
    };
    if send_initial && version_match != "NotOlderThan" {
        return Err(forbidden(
            "resourceVersionMatch",
            "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
        ));
    }
    if send_initial && !bookmarks {
        return Err(forbidden(
            "allowWatchBookmarks",
            "sendInitialEvents requires setting allowWatchBookmarks to true",
        ));
    }
    if !send_initial && !version_match.is_empty() {
        return Err(forbidden(
            "resourceVersionMatch",
            "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
        ));
    }
    let timeout = match query.number("timeoutSeconds")? {
        Some(seconds) => Duration::from_secs(seconds.max(0) as u64),
        None => Duration::from_secs(rand::rng().random_range(1800..3600)),
    };
    let watch = Watch {
        resource: request.resource(),
        namespace: request.path.namespace.clone(),
        selection: Selection::parse(&request)?,
        representation: Representation::from_headers(&request.headers),
        bookmarks,
    };
    let from = query.get("resourceVersion").unwrap_or_default();
    let start =
        if send_initial || from.is_empty() || from == "0" {
            None
        } else {
            Some(from.parse::<u64>().map_err(|_| {
                ApiError::bad_request(format!("invalid resource version: {from:?}"))
            })?)
        };
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let cluster = request.cluster.clone();
    let cancel = cluster.watch_cancellation();
    let bookmark_every = cluster.options.bookmark_interval;
    tokio::spawn(async move {
        let deadline = Instant::now() + timeout;
        let mut revisions = cluster.store.revisions();
        let mut cursor = match start {
            Some(revision) => revision,
            None => {
                let (revision, lines) = watch.initial_events(&cluster.store.txn(), send_initial);
                for line in lines {
                    if tx.send(line).await.is_err() {
                        return;
                    }
                }
                revision
            }
        };
        let mut bookmark_tick = interval_at(Instant::now() + bookmark_every, bookmark_every);
        loop {
            let batch = {
                let txn = cluster.store.txn();
                txn.changes_since(cursor)
                    .map(|changes| (changes, txn.revision()))
            };
            if cancel.is_cancelled() {
                return;
            }
            match batch {
                Ok((changes, revision)) => {
                    for change in &changes {
                        if let Some(line) = watch.event(change) {
                            if tx.send(line).await.is_err() {
                                return;
                            }
                        }
                    }
                    cursor = revision;
                }
                Err(expired) => {
                    let status =
                        ApiError::too_old_resource_version(cursor, expired.oldest_available);
                    let _ = tx.send(line("ERROR", &status.to_status())).await;
                    return;
                }
            }
            // Biased, so a cut or closed watch ends before it sends anything more.
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                _ = tx.closed() => return,
                _ = sleep_until(deadline) => {
                    if watch.bookmarks {
                        let _ = tx.send(watch.bookmark(cursor, false)).await;
                    }
                    return;
                }
                changed = revisions.changed() => if changed.is_err() { return },
                _ = bookmark_tick.tick(), if watch.bookmarks => {
                    if tx.send(watch.bookmark(cursor, false)).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let body = Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|line| (Ok::<_, Infallible>(line), rx))
    }));
    let mut response = json_response(StatusCode::OK, &Value::Null);
    *response.body_mut() = body;
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache, private"),
    );
    Ok(response)
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut text = json!({ "type": kind, "object": object }).to_string();
    text.push('\n');
    Bytes::from(text)
}

impl Watch {
    fn in_scope(&self, namespace: &str, version: &Version) -> bool {
        self.namespace.as_deref().is_none_or(|ns| namespace == ns)
            && self.selection.matches_version(version)
    }

    /// `ADDED` for every object that matches now, the revision they were read at, and for
    /// `sendInitialEvents` the bookmark that says the initial state is complete.
    fn initial_events(&self, txn: &crate::store::Txn<'_>, send_initial: bool) -> (u64, Vec<Bytes>) {
        let revision = txn.revision();
        let mut lines: Vec<Bytes> = txn
            .list(self.resource, self.namespace.as_deref(), None)
            .iter()
            .filter(|object| self.selection.matches(object))
            .map(|object| line("ADDED", &self.representation.render(object)))
            .collect();
        if send_initial {
            lines.push(self.bookmark(revision, true));
        }
        (revision, lines)
    }

    /// The event a change becomes for this watch, if any.
    fn event(&self, change: &Arc<Recorded>) -> Option<Bytes> {
        if change.resource != self.resource {
            return None;
        }
        let now = self.in_scope(&change.namespace, &change.object);
        let before = change
            .previous
            .as_ref()
            .is_some_and(|p| self.in_scope(&change.namespace, p));
        let kind = match (change.kind, before, now) {
            (ChangeKind::Added, _, true) => "ADDED",
            (ChangeKind::Modified, true, true) => "MODIFIED",
            (ChangeKind::Modified, false, true) => "ADDED",
            (ChangeKind::Modified, true, false) => "DELETED",
            (ChangeKind::Deleted, true, _) => "DELETED",
            _ => return None,
        };
        Some(match self.representation {
            Representation::Full => {
                let mut text = format!("{{\"type\":\"{kind}\",\"object\":").into_bytes();
                text.extend_from_slice(&change.object.json);
                text.extend_from_slice(b"}\n");
                Bytes::from(text)
            }
            Representation::Metadata => {
                line(kind, &self.representation.render(&change.object.parse()))
            }
        })
    }

    fn bookmark(&self, revision: u64, initial_events_end: bool) -> Bytes {
        let (kind, api_version) = match self.representation {
            Representation::Full => (self.resource.kind(), self.resource.api_version()),
            Representation::Metadata => ("PartialObjectMetadata", "meta.k8s.io/v1"),
        };
        let mut metadata = json!({ "resourceVersion": revision.to_string() });
        if initial_events_end {
            metadata["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
        }
        line(
            "BOOKMARK",
            &json!({ "kind": kind, "apiVersion": api_version, "metadata": metadata }),
        )
    }
}
