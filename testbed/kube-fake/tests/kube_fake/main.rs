//! The fake checked through clients nobody here wrote: the `kube` crate (API semantics,
//! errors, watches, garbage collection, the kubelet's behaviour as a client sees it) and the
//! Python `kubernetes` package.

mod api;
mod cli;
mod common;
mod kubelet;
mod python;
