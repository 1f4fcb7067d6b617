"""Drive the emulator's REST API with pybuildkite (a client nobody here wrote).

Run by tests/pybuildkite.rs with UPDRAFT_EMULATOR_URL, UPDRAFT_API_TOKEN, UPDRAFT_AGENT_TOKEN
and UPDRAFT_ORG set. The agent-side steps (register, acquire, log chunk, finish) use plain
`requests`, since pybuildkite only speaks REST. Exits non-zero with a message on any mismatch.
"""

import gzip
import os
import sys

import requests
from pybuildkite.buildkite import Buildkite, BuildState
from pybuildkite.jobs import LogFormat

URL = os.environ["UPDRAFT_EMULATOR_URL"]
ORG = os.environ["UPDRAFT_ORG"]
AGENT_TOKEN = os.environ["UPDRAFT_AGENT_TOKEN"]

PIPELINE_YAML = """
steps:
  - label: build
    command: make build
    agents:
      queue: default
"""


def agent_api(method, path, token, headers=None, **kwargs):
    headers = {"Authorization": f"Token {token}", **(headers or {})}
    response = requests.request(method, f"{URL}/v3{path}", headers=headers, timeout=10, **kwargs)
    response.raise_for_status()
    return response


def run_job_and_fail(job_id):
    """Register an agent, acquire the job, log one line, finish with exit status 1."""
    registered = agent_api("POST", "/register", AGENT_TOKEN, json={"name": "py-agent", "meta_data": ["queue=default"]}).json()
    session = registered["access_token"]
    agent_api("POST", "/connect", session)
    job = agent_api("PUT", f"/jobs/{job_id}/acquire", session, headers={"X-Buildkite-Lock-Acquire-Job": "1"}).json()
    token = job["token"]
    agent_api("PUT", f"/jobs/{job_id}/start", token, json={"started_at": "2026-01-01T00:00:00Z"})
    line = b"hello from pybuildkite\n"
    agent_api(
        "POST",
        f"/jobs/{job_id}/chunks?sequence=1&offset=0&size={len(line)}",
        token,
        data=gzip.compress(line),
        headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"},
    )
    agent_api("PUT", f"/jobs/{job_id}/finish", token, json={"exit_status": "1", "chunks_failed_count": 0})
    return registered["id"], line.decode()


def main():
    bk = Buildkite()
    bk.set_access_token(os.environ["UPDRAFT_API_TOKEN"])
    # pybuildkite builds every URL from this attribute (default https://api.buildkite.com/v2/).
    bk.base_url = f"{URL}/v2/"

    pipeline = bk.pipelines().create_yaml_pipeline(ORG, "py-pipe", "https://example.invalid/repo.git", PIPELINE_YAML)
    assert pipeline["slug"] == "py-pipe", pipeline

    first = bk.builds().create_build(ORG, "py-pipe", "HEAD", "main", message="first")
    second = bk.builds().create_build(ORG, "py-pipe", "HEAD", "main", message="second")
    assert (first["number"], second["number"]) == (1, 2), (first["number"], second["number"])

    got = bk.builds().get_build_by_number(ORG, "py-pipe", 1)
    assert got["message"] == "first" and got["state"] == "scheduled", got
    listed = bk.builds().list_all_for_pipeline(ORG, "py-pipe")
    assert [b["number"] for b in listed] == [2, 1], [b["number"] for b in listed]
    scheduled = bk.builds().list_all_for_pipeline(ORG, "py-pipe", states=[BuildState.SCHEDULED])
    assert len(scheduled) == 2, scheduled

    canceled = bk.builds().cancel_build(ORG, "py-pipe", 2)
    assert canceled["state"] == "canceled", canceled["state"]

    job_id = got["jobs"][0]["id"]
    agent_id, line = run_job_and_fail(job_id)
    log = bk.jobs().get_job_log(ORG, "py-pipe", 1, job_id, log_format=LogFormat.TEXT)
    assert log.decode() == line, log
    log_json = bk.jobs().get_job_log(ORG, "py-pipe", 1, job_id, log_format=LogFormat.JSON)
    assert log_json["content"] == line, log_json

    retried = bk.jobs().retry_job(ORG, "py-pipe", 1, job_id)
    assert retried["id"] != job_id and retried["state"] == "scheduled", retried
    assert bk.builds().get_build_by_number(ORG, "py-pipe", 1)["state"] == "running"

    agents = bk.agents().list_all(ORG)
    assert [a["id"] for a in agents] == [agent_id], agents
    assert bk.agents().get_agent(ORG, agent_id)["name"] == "py-agent"
    assert bk.agents().stop_agent(ORG, agent_id, force=False) is True
    assert bk.agents().get_agent(ORG, agent_id)["connection_state"] == "stopping"

    print("pybuildkite conformance: OK")


if __name__ == "__main__":
    try:
        main()
    except Exception as error:  # report any failure with its type, then fail the test
        print(f"pybuildkite conformance FAILED: {type(error).__name__}: {error}", file=sys.stderr)
        raise
