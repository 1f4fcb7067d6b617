//! The resources the fake serves, with the names Kubernetes uses for them in paths, kinds,
//! discovery documents and error messages.

/// A resource type the fake API server serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resource {
    /// `v1` Pods.
    Pods,
    /// `v1` Secrets.
    Secrets,
    /// `v1` PodTemplates.
    PodTemplates,
    /// `v1` Events (core, the kind `kubectl describe` shows).
    Events,
    /// `v1` Namespaces (cluster-scoped).
    Namespaces,
    /// `batch/v1` Jobs.
    Jobs,
    /// `coordination.k8s.io/v1` Leases.
    Leases,
}

impl Resource {
    /// Every resource, in discovery order.
    pub const ALL: [Resource; 7] = [
        Resource::Pods,
        Resource::Secrets,
        Resource::PodTemplates,
        Resource::Events,
        Resource::Namespaces,
        Resource::Jobs,
        Resource::Leases,
    ];

    /// The lowercase plural used in paths (`jobs`).
    pub fn plural(self) -> &'static str {
        match self {
            Resource::Pods => "pods",
            Resource::Secrets => "secrets",
            Resource::PodTemplates => "podtemplates",
            Resource::Events => "events",
            Resource::Namespaces => "namespaces",
            Resource::Jobs => "jobs",
            Resource::Leases => "leases",
        }
    }

    /// The singular name discovery reports (`job`).
    pub fn singular(self) -> &'static str {
        match self {
            Resource::Pods => "pod",
            Resource::Secrets => "secret",
            Resource::PodTemplates => "podtemplate",
            Resource::Events => "event",
            Resource::Namespaces => "namespace",
            Resource::Jobs => "job",
            Resource::Leases => "lease",
        }
    }

    /// The object kind (`Job`).
    pub fn kind(self) -> &'static str {
        match self {
            Resource::Pods => "Pod",
            Resource::Secrets => "Secret",
            Resource::PodTemplates => "PodTemplate",
            Resource::Events => "Event",
            Resource::Namespaces => "Namespace",
            Resource::Jobs => "Job",
            Resource::Leases => "Lease",
        }
    }

    /// The API group, empty for the core group.
    pub fn group(self) -> &'static str {
        match self {
            Resource::Jobs => "batch",
            Resource::Leases => "coordination.k8s.io",
            _ => "",
        }
    }

    /// The `apiVersion` of objects of this resource (`batch/v1`).
    pub fn api_version(self) -> &'static str {
        match self {
            Resource::Jobs => "batch/v1",
            Resource::Leases => "coordination.k8s.io/v1",
            _ => "v1",
        }
    }

    /// Whether objects live in a namespace.
    pub fn namespaced(self) -> bool {
        self != Resource::Namespaces
    }

    /// Whether the resource has a `/status` subresource, so writes to the main resource leave
    /// `status` alone and writes to `/status` touch nothing else.
    pub fn has_status(self) -> bool {
        matches!(self, Resource::Pods | Resource::Jobs | Resource::Namespaces)
    }

    /// Short names, as `kubectl` knows them.
    pub fn short_names(self) -> &'static [&'static str] {
        match self {
            Resource::Pods => &["po"],
            Resource::Events => &["ev"],
            Resource::Namespaces => &["ns"],
            _ => &[],
        }
    }

    /// The resource as Kubernetes names it in messages: `jobs.batch`, `pods`.
    pub fn qualified(self) -> String {
        match self.group() {
            "" => self.plural().to_string(),
            group => format!("{}.{group}", self.plural()),
        }
    }

    /// The kind as Kubernetes names it in validation messages: `Job.batch`, `Pod`.
    pub fn qualified_kind(self) -> String {
        match self.group() {
            "" => self.kind().to_string(),
            group => format!("{}.{group}", self.kind()),
        }
    }

    /// The resource served at `/{api|apis/group}/{version}/.../{plural}`, if any.
    pub fn find(group: &str, version: &str, plural: &str) -> Option<Resource> {
        Resource::ALL
            .into_iter()
            .find(|r| r.group() == group && version == "v1" && r.plural() == plural)
    }

    /// The resource whose objects have this `apiVersion` and `kind`.
    pub fn of_kind(api_version: &str, kind: &str) -> Option<Resource> {
        Resource::ALL
            .into_iter()
            .find(|r| r.api_version() == api_version && r.kind() == kind)
    }
}
