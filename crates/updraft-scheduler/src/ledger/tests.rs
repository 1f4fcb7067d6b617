use super::*;
use rusqlite::params;

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn reservation(id: Uuid) -> NewReservation {
    NewReservation {
        id,
        fleet: "linux".into(),
        queue: "linux".into(),
        priority: 0,
        scheduled_at_ms: 1,
        source: "pull",
        expires_at_ms: 2,
        context: JobContext::default(),
    }
}

#[test]
fn a_job_walks_through_its_stages_and_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.sqlite");
    let job = Uuid::new_v4();
    {
        let ledger = Ledger::open(&path).unwrap();
        ledger.record_reserved(&[reservation(job)]).unwrap();
        assert_eq!(ledger.record_launching(&[job]).unwrap(), vec![(job, 1)]);
        ledger
            .record_launched(&[LaunchRow {
                name: format!("updraft-{job}"),
                job_id: job,
                fleet: "linux".into(),
                attempt: 1,
                started_at_ms: 5,
                ended_at_ms: None,
                outcome: None,
            }])
            .unwrap();
    }
    let ledger = Ledger::open(&path).unwrap();
    let open = ledger.open_jobs().unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].stage, Stage::Launched);
    assert_eq!(open[0].attempts, 1);
    assert_eq!(ledger.launch_count(job).unwrap(), 1);
    ledger.record_done(&[(job, "passed".into())]).unwrap();
    assert!(ledger.open_jobs().unwrap().is_empty());
    assert_eq!(
        ledger.recent_launches(10).unwrap()[0].outcome.as_deref(),
        Some("passed")
    );
}

#[test]
fn a_job_to_resume_comes_back_with_the_context_it_was_taken_in_with() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(&dir.path().join("l.sqlite")).unwrap();
    let job = Uuid::new_v4();
    let context = JobContext {
        queue: "linux".into(),
        agent_query_rules: vec!["queue=linux".into(), "resource_class=large".into()],
        pipeline_slug: Some("web".into()),
        build_number: Some(42),
        step_key: Some("test".into()),
        ..JobContext::default()
    };
    ledger
        .record_reserved(&[NewReservation {
            context: context.clone(),
            ..reservation(job)
        }])
        .unwrap();
    let resumed = ledger.open_jobs_to_resume().unwrap();
    assert_eq!(resumed.len(), 1);
    assert_eq!(resumed[0].job, ledger.open_jobs().unwrap()[0]);
    assert_eq!(resumed[0].context, context);
    assert_eq!(ledger.job_to_resume(job).unwrap().unwrap().context, context);
    assert!(ledger.job_to_resume(Uuid::new_v4()).unwrap().is_none());
}

#[test]
fn a_second_reservation_never_reopens_a_launched_job() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(&dir.path().join("l.sqlite")).unwrap();
    let job = Uuid::new_v4();
    ledger.record_reserved(&[reservation(job)]).unwrap();
    ledger.record_launching(&[job]).unwrap();
    ledger.record_reserved(&[reservation(job)]).unwrap();
    assert_eq!(ledger.job(job).unwrap().unwrap().stage, Stage::Launching);
    assert!(ledger
        .record_launching(&[Uuid::new_v4()])
        .unwrap()
        .is_empty());
}

#[test]
fn a_refused_reservation_closes_only_jobs_not_yet_launching() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(&dir.path().join("l.sqlite")).unwrap();
    let (idle, launching) = (Uuid::new_v4(), Uuid::new_v4());
    ledger
        .record_reserved(&[reservation(idle), reservation(launching)])
        .unwrap();
    ledger.record_launching(&[launching]).unwrap();
    assert_eq!(
        ledger
            .record_not_reserved(&[idle, launching], "taken")
            .unwrap(),
        vec![idle]
    );
    assert_eq!(
        ledger.job(launching).unwrap().unwrap().stage,
        Stage::Launching
    );
}

const DAY_MS: i64 = 24 * 3600 * 1000;

/// Reserve, launch and (when `close`) close a job, then move its last change `age_ms`
/// into the past.
fn job_aged(ledger: &Ledger, close: bool, age_ms: i64) -> Uuid {
    let job = Uuid::new_v4();
    ledger.record_reserved(&[reservation(job)]).unwrap();
    ledger.record_launching(&[job]).unwrap();
    ledger
        .record_launched(&[LaunchRow {
            name: format!("updraft-{job}"),
            job_id: job,
            fleet: "linux".into(),
            attempt: 1,
            started_at_ms: now_ms(),
            ended_at_ms: None,
            outcome: None,
        }])
        .unwrap();
    if close {
        ledger.record_done(&[(job, "passed".into())]).unwrap();
    }
    let conn = ledger.conn.lock().unwrap();
    conn.execute(
        "UPDATE jobs SET stage_since_ms = stage_since_ms - ?2 WHERE id = ?1",
        params![job.to_string(), age_ms],
    )
    .unwrap();
    job
}

/// Rows of `job` in each table: jobs, launches, reservations, transitions.
fn rows_of(ledger: &Ledger, job: Uuid) -> [i64; 4] {
    let conn = ledger.conn.lock().unwrap();
    let count = |sql: &str| -> i64 {
        conn.query_row(sql, [job.to_string()], |row| row.get(0))
            .unwrap()
    };
    [
        count("SELECT COUNT(*) FROM jobs WHERE id = ?1"),
        count("SELECT COUNT(*) FROM launches WHERE job_id = ?1"),
        count("SELECT COUNT(*) FROM reservations WHERE job_id = ?1"),
        count("SELECT COUNT(*) FROM transitions WHERE job_id = ?1"),
    ]
}

#[test]
fn pruning_removes_only_jobs_closed_before_the_retention_with_all_their_rows() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(&dir.path().join("l.sqlite")).unwrap();
    let old_closed = job_aged(&ledger, true, 8 * DAY_MS);
    let recent_closed = job_aged(&ledger, true, DAY_MS);
    let old_open = job_aged(&ledger, false, 30 * DAY_MS);
    // reserved, launching, launched, done.
    assert_eq!(rows_of(&ledger, old_closed), [1, 1, 1, 4]);

    let pruned = ledger.prune_closed(now_ms() - 7 * DAY_MS, 1000).unwrap();
    assert_eq!(
        pruned,
        Pruned {
            jobs: 1,
            launches: 1,
            reservations: 1,
            transitions: 4
        }
    );
    assert_eq!(pruned.total(), 7);
    assert_eq!(rows_of(&ledger, old_closed), [0, 0, 0, 0]);
    assert_eq!(rows_of(&ledger, recent_closed), [1, 1, 1, 4]);
    assert_eq!(rows_of(&ledger, old_open), [1, 1, 1, 3]);
    assert_eq!(
        ledger
            .open_jobs()
            .unwrap()
            .iter()
            .map(|j| j.id)
            .collect::<Vec<_>>(),
        vec![old_open]
    );
    assert_eq!(
        ledger.prune_closed(now_ms() - 7 * DAY_MS, 1000).unwrap(),
        Pruned::default()
    );
}

#[test]
fn pruning_takes_the_oldest_closed_jobs_first_up_to_the_cap() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(&dir.path().join("l.sqlite")).unwrap();
    let oldest = job_aged(&ledger, true, 10 * DAY_MS);
    let middle = job_aged(&ledger, true, 9 * DAY_MS);
    let youngest = job_aged(&ledger, true, 8 * DAY_MS);
    let cutoff = now_ms() - 7 * DAY_MS;
    assert_eq!(ledger.prune_closed(cutoff, 2).unwrap().jobs, 2);
    assert!(ledger.job(oldest).unwrap().is_none());
    assert!(ledger.job(middle).unwrap().is_none());
    assert!(ledger.job(youngest).unwrap().is_some());
    assert_eq!(ledger.prune_closed(cutoff, 2).unwrap().jobs, 1);
    assert!(ledger.job(youngest).unwrap().is_none());
}

#[test]
fn a_job_reserved_again_after_closing_is_open_and_never_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(&dir.path().join("l.sqlite")).unwrap();
    let job = job_aged(&ledger, true, 8 * DAY_MS);
    ledger.record_reserved(&[reservation(job)]).unwrap();
    assert_eq!(
        ledger.prune_closed(now_ms() + DAY_MS, 1000).unwrap(),
        Pruned::default()
    );
    assert_eq!(ledger.job(job).unwrap().unwrap().stage, Stage::Reserved);
    assert_eq!(rows_of(&ledger, job), [1, 1, 2, 5]);
}

#[test]
fn ten_thousand_reservations_fit_in_one_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(&dir.path().join("l.sqlite")).unwrap();
    let jobs: Vec<NewReservation> = (0..10_000).map(|_| reservation(Uuid::new_v4())).collect();
    ledger.record_reserved(&jobs).unwrap();
    let ids: Vec<Uuid> = jobs.iter().map(|j| j.id).collect();
    assert_eq!(ledger.record_launching(&ids).unwrap().len(), 10_000);
    assert_eq!(ledger.open_jobs().unwrap().len(), 10_000);
}
