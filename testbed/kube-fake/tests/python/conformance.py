"""kube-fake checked by a client nobody here wrote: the Python `kubernetes` package.

Usage: conformance.py KUBECONFIG NAMESPACE

Loads the kubeconfig the fake wrote and exercises it as a program would use a real cluster:
create/get/list with label and field selectors, watch from a resourceVersion (and the 410
for one older than the watch history), the patch formats, replace conflicts, delete with
propagation policies, deletecollection, eviction, Leases, Events, Secrets and pod logs.
Every object read back is also validated against the Kubernetes 1.33 JSON schema (strict:
no unknown fields). Prints one line per check and `N passed, 0 failed`; exits non-zero on the
first failure.
"""

import base64
import json
import sys
import time

import kubernetes_validate
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

SCHEMA_VERSION = "1.33.0"
PATIENCE_SECONDS = 20


class Conformance:
    def __init__(self, namespace):
        self.namespace = namespace
        self.api = client.ApiClient()
        self.core = client.CoreV1Api(self.api)
        self.batch = client.BatchV1Api(self.api)
        self.coordination = client.CoordinationV1Api(self.api)
        self.passed = 0

    def check(self, name, condition, detail=""):
        if not condition:
            raise AssertionError(f"{name}: {detail}")
        self.passed += 1
        print(f"ok - {name}")

    def valid(self, kind, obj):
        """Validates an object (a model or a dict) against the Kubernetes schema, strictly."""
        data = obj if isinstance(obj, dict) else self.api.sanitize_for_serialization(obj)
        data = dict(data)
        data.setdefault("kind", kind)
        data.setdefault("apiVersion", {"Job": "batch/v1", "Lease": "coordination.k8s.io/v1"}.get(kind, "v1"))
        try:
            kubernetes_validate.validate(data, SCHEMA_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            raise AssertionError(f"{kind} {data['metadata'].get('name')} fails the schema: {error}") from error
        self.check(f"{kind} {data['metadata'].get('name')} matches the Kubernetes {SCHEMA_VERSION} schema", True)

    def api_error(self, call, status, reason):
        try:
            call()
        except ApiException as error:
            body = json.loads(error.body)
            self.check(f"HTTP {status} {reason}", error.status == status and body["reason"] == reason
                       and body["kind"] == "Status" and body["code"] == status, f"{error.status} {body}")
            return
        raise AssertionError(f"expected HTTP {status} {reason}, the call succeeded")

    def wait_for(self, what, probe):
        deadline = time.monotonic() + PATIENCE_SECONDS
        while time.monotonic() < deadline:
            found = probe()
            if found:
                return found
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}")

    def job_body(self, name, command, labels=None, grace=1):
        return {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": name, "labels": labels or {"suite": "python"}},
            "spec": {
                "backoffLimit": 0,
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "terminationGracePeriodSeconds": grace,
                        "containers": [{"name": "main", "image": "busybox:1.36", "command": command}],
                    }
                },
            },
        }

    def job_pods(self, job):
        return self.core.list_namespaced_pod(self.namespace, label_selector=f"batch.kubernetes.io/job-name={job}").items

    def gone(self, read):
        try:
            read()
        except ApiException as error:
            if error.status == 404:
                return True
            raise
        return False

    def discovery_and_namespace(self):
        version = client.VersionApi(self.api).get_code()
        self.check("version is reported", version.major == "1" and version.minor, version)
        namespace = self.core.read_namespace(self.namespace)
        self.check("namespace exists and is Active", namespace.status.phase == "Active")
        self.valid("Namespace", namespace)

    def crud_and_selectors(self):
        ns = self.namespace
        created = self.batch.create_namespaced_job(ns, self.job_body("py-one", ["sleep", "30"], {"suite": "python", "tier": "a"}))
        self.check("created Job has uid, resourceVersion and generation 1",
                   created.metadata.uid and created.metadata.resource_version and created.metadata.generation == 1)
        self.batch.create_namespaced_job(ns, self.job_body("py-two", ["sleep", "30"], {"suite": "python", "tier": "b"}))
        self.api_error(lambda: self.batch.create_namespaced_job(ns, self.job_body("py-one", ["true"])), 409, "AlreadyExists")
        self.api_error(lambda: self.batch.read_namespaced_job("py-missing", ns), 404, "NotFound")
        self.api_error(lambda: self.batch.create_namespaced_job(ns, self.job_body("Bad_Name", ["true"])), 422, "Invalid")

        def names(**selectors):
            return sorted(j.metadata.name for j in self.batch.list_namespaced_job(ns, **selectors).items)

        self.check("label selector =", names(label_selector="tier=a") == ["py-one"])
        self.check("label selector in/notin", names(label_selector="tier in (a,b),tier notin (b)") == ["py-one"])
        self.check("label selector exists/!exists", names(label_selector="suite,!missing") == ["py-one", "py-two"])
        self.check("field selector metadata.name", names(field_selector="metadata.name=py-two") == ["py-two"])
        page = self.batch.list_namespaced_job(ns, limit=1)
        rest = self.batch.list_namespaced_job(ns, limit=1, _continue=page.metadata._continue)
        self.check("limit and continue page through", [page.items[0].metadata.name, rest.items[0].metadata.name] == ["py-one", "py-two"])
        self.api_error(lambda: self.batch.list_namespaced_job(ns, field_selector="spec.nothing=x"), 400, "BadRequest")

        pod = self.wait_for("py-one's pod to run", lambda: next(
            (p for p in self.job_pods("py-one") if p.status.phase == "Running"), None))
        running = self.core.list_namespaced_pod(ns, field_selector="status.phase=Running")
        self.check("field selector status.phase", pod.metadata.name in [p.metadata.name for p in running.items])
        self.valid("Pod", pod)
        self.valid("Job", self.batch.read_namespaced_job("py-one", ns))

    def patches_and_conflicts(self):
        ns = self.namespace
        before = self.batch.read_namespaced_job("py-one", ns)
        merged = self.batch.patch_namespaced_job("py-one", ns, {"metadata": {"labels": {"merged": "yes"}}},
                                                 _content_type="application/merge-patch+json")
        self.check("merge patch", merged.metadata.labels["merged"] == "yes")
        strategic = self.batch.patch_namespaced_job("py-one", ns, {"metadata": {"annotations": {"s": "1"}}},
                                                    _content_type="application/strategic-merge-patch+json")
        self.check("strategic merge patch", strategic.metadata.annotations["s"] == "1")
        patched = self.batch.patch_namespaced_job("py-one", ns, [{"op": "add", "path": "/metadata/labels/json", "value": "p"}])
        self.check("JSON patch", patched.metadata.labels["json"] == "p")
        self.check("every write moved the resourceVersion", len({before.metadata.resource_version, merged.metadata.resource_version,
                                                                 strategic.metadata.resource_version, patched.metadata.resource_version}) == 4)
        before.metadata.labels["stale"] = "yes"
        self.api_error(lambda: self.batch.replace_namespaced_job("py-one", ns, before), 409, "Conflict")
        fresh = self.batch.read_namespaced_job("py-one", ns)
        fresh.metadata.labels["replaced"] = "yes"
        replaced = self.batch.replace_namespaced_job("py-one", ns, fresh)
        self.check("replace with the current resourceVersion", replaced.metadata.labels["replaced"] == "yes")

    def watch_from_resource_version(self):
        ns = self.namespace
        start = self.batch.list_namespaced_job(ns).metadata.resource_version
        self.batch.create_namespaced_job(ns, self.job_body("py-watched", ["true"], {"suite": "watched"}))
        self.batch.patch_namespaced_job("py-watched", ns, {"metadata": {"labels": {"step": "2"}}},
                                        _content_type="application/merge-patch+json")
        self.batch.delete_namespaced_job("py-watched", ns, propagation_policy="Background")
        seen = []
        stream = watch.Watch()
        for event in stream.stream(self.batch.list_namespaced_job, ns, label_selector="suite=watched",
                                   resource_version=start, timeout_seconds=5):
            seen.append(event["type"])
            if event["type"] == "DELETED":
                stream.stop()
        self.check("watch from a resourceVersion replays ADDED, MODIFIED, DELETED",
                   seen[0] == "ADDED" and "MODIFIED" in seen and seen[-1] == "DELETED", seen)

    def watch_too_old(self):
        ns = self.namespace
        old = self.core.list_namespaced_secret(ns).metadata.resource_version
        for i in range(60):
            self.core.create_namespaced_secret(ns, {"metadata": {"name": f"churn-{i}"}, "stringData": {"k": "v"}})
            self.core.delete_namespaced_secret(f"churn-{i}", ns)
        try:
            for _ in watch.Watch().stream(self.core.list_namespaced_secret, ns, resource_version=old, timeout_seconds=2):
                pass
        except ApiException as error:
            self.check("watch from a compacted resourceVersion is 410 Expired",
                       error.status == 410 and "too old resource version" in str(error.reason), error)
            return
        raise AssertionError("watch from an old resourceVersion did not fail with 410")

    def secrets_events_and_logs(self):
        ns = self.namespace
        self.core.create_namespaced_secret(ns, {"metadata": {"name": "py-secret"}, "stringData": {"token": "s3cret"}})
        secret = self.core.read_namespaced_secret("py-secret", ns)
        self.check("stringData is stored as base64 data", base64.b64decode(secret.data["token"]) == b"s3cret" and secret.type == "Opaque")
        self.valid("Secret", secret)

        self.batch.create_namespaced_job(ns, self.job_body("py-logs", ["sh", "-c", "echo hello from pod"]))
        self.wait_for("py-logs to complete", lambda: any(
            c.type == "Complete" and c.status == "True"
            for c in (self.batch.read_namespaced_job("py-logs", ns).status.conditions or [])))
        job = self.batch.read_namespaced_job("py-logs", ns)
        self.check("completed Job status", job.status.succeeded == 1 and job.status.completion_time is not None)
        self.valid("Job", job)
        pod = self.job_pods("py-logs")[0]
        self.check("terminated container status", pod.status.container_statuses[0].state.terminated.exit_code == 0
                   and pod.status.container_statuses[0].state.terminated.reason == "Completed")
        self.valid("Pod", pod)
        # Raw bytes: kubernetes 36 returns the repr of the bytes from read_namespaced_pod_log
        # (kubernetes-client/python#2596), against any server.
        logs = self.core.read_namespaced_pod_log(pod.metadata.name, ns, _preload_content=False).data.decode()
        self.check("pod log is the process output", logs == "hello from pod\n", repr(logs))

        events = self.core.list_namespaced_event(ns, field_selector=f"involvedObject.name={pod.metadata.name}").items
        reasons = {e.reason for e in events}
        self.check("kubelet and scheduler events", {"Scheduled", "Pulled", "Created", "Started"} <= reasons, reasons)
        started = next(e for e in events if e.reason == "Started")
        self.check("event fields", started.involved_object.kind == "Pod" and started.source.component == "kubelet"
                   and started.count == 1 and started.type == "Normal" and started.first_timestamp is not None)
        self.valid("Event", started)
        by_kind = self.core.list_namespaced_event(ns, field_selector="involvedObject.kind=Job,reason=SuccessfulCreate").items
        self.check("job controller events by field selector", any(e.involved_object.name == "py-logs" for e in by_kind))

    def delete_propagation(self):
        ns = self.namespace
        self.batch.delete_namespaced_job("py-one", ns, propagation_policy="Foreground")
        self.wait_for("the foreground-deleted Job and its pods to go", lambda:
                      self.gone(lambda: self.batch.read_namespaced_job("py-one", ns)) and not self.job_pods("py-one"))
        self.check("Foreground deletion removes the Job after its pods", True)

        pod = self.job_pods("py-two")[0]
        self.batch.delete_namespaced_job("py-two", ns, propagation_policy="Orphan")
        self.wait_for("the orphaning Job to go", lambda: self.gone(lambda: self.batch.read_namespaced_job("py-two", ns)))
        orphan = self.core.read_namespaced_pod(pod.metadata.name, ns)
        self.check("Orphan deletion keeps the pod without its owner", orphan.metadata.owner_references is None)
        self.core.delete_namespaced_pod(pod.metadata.name, ns, grace_period_seconds=0)
        self.wait_for("the orphan pod to go", lambda: self.gone(lambda: self.core.read_namespaced_pod(pod.metadata.name, ns)))

    def pods_collections_and_eviction(self):
        ns = self.namespace
        for name in ["py-bare-1", "py-bare-2", "py-evicted"]:
            self.core.create_namespaced_pod(ns, {
                "metadata": {"name": name, "labels": {"bare": "yes" if name != "py-evicted" else "no"}},
                "spec": {"terminationGracePeriodSeconds": 1,
                         "containers": [{"name": "main", "image": "busybox", "command": ["sleep", "30"]}]},
            })
        self.core.delete_collection_namespaced_pod(ns, label_selector="bare=yes")
        self.wait_for("deletecollection to remove the selected pods", lambda:
                      not self.core.list_namespaced_pod(ns, label_selector="bare=yes").items)
        self.check("deletecollection with a label selector", True)
        self.core.create_namespaced_pod_eviction("py-evicted", ns, client.V1Eviction(metadata=client.V1ObjectMeta(name="py-evicted")))
        self.wait_for("the evicted pod to be deleted", lambda: self.gone(lambda: self.core.read_namespaced_pod("py-evicted", ns)))
        self.check("eviction deletes the pod", True)

    def leases(self):
        ns = self.namespace
        lease = self.coordination.create_namespaced_lease(ns, {
            "metadata": {"name": "py-leader"},
            "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15, "renewTime": "2025-01-01T00:00:00.000000Z"},
        })
        lease.spec.holder_identity = "b"
        renewed = self.coordination.replace_namespaced_lease("py-leader", ns, lease)
        self.check("lease replace", renewed.spec.holder_identity == "b")
        self.valid("Lease", renewed)
        lease.spec.holder_identity = "c"
        self.api_error(lambda: self.coordination.replace_namespaced_lease("py-leader", ns, lease), 409, "Conflict")

    def run(self):
        self.discovery_and_namespace()
        self.crud_and_selectors()
        self.patches_and_conflicts()
        self.watch_from_resource_version()
        self.secrets_events_and_logs()
        self.delete_propagation()
        self.pods_collections_and_eviction()
        self.leases()
        self.watch_too_old()
        print(f"{self.passed} passed, 0 failed")


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    config.load_kube_config(config_file=sys.argv[1])
    Conformance(sys.argv[2]).run()


if __name__ == "__main__":
    main()
