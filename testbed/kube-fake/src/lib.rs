//! Test bed only: a thin, faithful fake of the Kubernetes API server and a fake kubelet.
