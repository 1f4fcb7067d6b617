//! `updraft run` taking push events from SQS, end to end: the emulator's EventBridge events
//! go (through a stand-in for an EventBridge rule's SQS target that delivers 30 % of them
//! twice) to a queue in moto, which the scheduler long-polls (`[aws.sqs_push]`) with pulling
//! slowed to once a minute so push does the work. The scheduler is SIGKILLed while it holds
//! messages, so those come back after their visibility timeout to the next one. Every job is
//! launched (acquired) once and the queue ends empty. The scheduler reads its agent token
//! from SSM and its webhook token from Secrets Manager (`*_token_from`).

use crate::support::{quote, start_scheduler, AwsWorld, SERIAL, UPDRAFT};
use axum::body::Bytes;
use axum::extract::State;
use nix::sys::signal::Signal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use updraft_aws_fakes::sdk_config;
use updraft_emulator::{JobState, PushTargets};

/// What the EventBridge rule target stand-in shares with its handler.
struct Target {
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    delivered: AtomicU64,
}

/// Deliver one event to the queue, and every third or so twice.
async fn deliver(State(target): State<Arc<Target>>, body: Bytes) -> &'static str {
    let body = String::from_utf8_lossy(&body).into_owned();
    let n = target.delivered.fetch_add(1, Ordering::SeqCst);
    let copies = if n % 10 < 3 { 2 } else { 1 };
    for _ in 0..copies {
        target
            .sqs
            .send_message()
            .queue_url(&target.queue_url)
            .message_body(body.clone())
            .send()
            .await
            .expect("SendMessage");
    }
    "ok"
}

/// Messages in the queue: (visible, received and not deleted yet).
async fn messages(sqs: &aws_sdk_sqs::Client, queue_url: &str) -> (u32, u32) {
    use aws_sdk_sqs::types::QueueAttributeName;
    let attributes = sqs
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .expect("GetQueueAttributes");
    let attributes = attributes.attributes().unwrap();
    let count = |name: QueueAttributeName| {
        attributes
            .get(&name)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (
        count(QueueAttributeName::ApproximateNumberOfMessages),
        count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_job_pushed_through_sqs_with_duplicates_and_redeliveries_is_launched_once() {
    let _serial = SERIAL.lock().await;
    let world = AwsWorld::start().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk_config(world.bed.moto_endpoint()));
    let queue_url = sqs
        .create_queue()
        .queue_name("updraft-jobs")
        .send()
        .await
        .expect("CreateQueue")
        .queue_url()
        .unwrap()
        .to_string();
    let target = Arc::new(Target {
        sqs: sqs.clone(),
        queue_url: queue_url.clone(),
        delivered: AtomicU64::new(0),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let rule_target = format!("http://{}/", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .route("/", axum::routing::post(deliver))
        .with_state(target.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    world.emulator.set_push_targets(PushTargets {
        webhook: None,
        eventbridge_url: Some(rule_target),
    });

    let fleets = format!(
        "[local]\nstate_dir = {}\nstop_grace = \"2s\"\n\n[[fleet]]\nname = \"local\"\nqueue = \"pushed\"\nmax_in_flight = 20\n\
         [fleet.template]\ncommand = [{}, \"agent\", \"start\", \"--acquire-job\", \"{{job_id}}\"]\n\
         env = {{ BUILDKITE_BUILD_PATH = {}, BUILDKITE_SKIP_CHECKOUT = \"true\" }}\n",
        quote(&world.path("local").display().to_string()),
        quote(UPDRAFT),
        quote(&world.path("builds").display().to_string()),
    );
    let sqs_table = format!(
        "\n[aws.sqs_push]\nqueue_url = {}\nwait = \"1s\"\nvisibility_timeout = \"2s\"\n",
        quote(&queue_url)
    );
    let config = world.config(&fleets, &sqs_table);
    let agent_token = world.emulator.agent_token().expose().to_string();
    let moto = sdk_config(world.bed.moto_endpoint());
    aws_sdk_ssm::Client::new(&moto)
        .put_parameter()
        .name("/updraft/agent-token")
        .value(&agent_token)
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .send()
        .await
        .expect("PutParameter");
    aws_sdk_secretsmanager::Client::new(&moto)
        .create_secret()
        .name("updraft/webhook")
        .secret_string("webhook-from-secrets-manager")
        .send()
        .await
        .expect("CreateSecret");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("poll_interval_ms = 1000", "poll_interval_ms = 60000")
        .replace(
            &format!("agent_token = {}", quote(&agent_token)),
            "agent_token_from = \"ssm:/updraft/agent-token\"",
        )
        .replace(
            "[http]",
            "[push]\nwebhook_token_from = \"secretsmanager:updraft/webhook\"\n\n[http]",
        );
    assert!(
        !text.contains(&agent_token),
        "the agent token is only in SSM"
    );
    std::fs::write(&config, text).unwrap();
    let log = world.path("scheduler.log");
    let mut scheduler = start_scheduler(&config, &log).await;

    let began = Instant::now();
    let jobs = world.build("pushed", "pushed", &[("sleep 0.2; echo pushed", &[], 60)]);
    let give_up = Instant::now() + crate::support::PATIENCE;
    // Killed once push has started jobs and while it holds messages it has not deleted.
    loop {
        let started = jobs
            .iter()
            .filter(|j| world.timeline(**j)["acquires"] == 1)
            .count();
        let (_, held) = messages(&sqs, &queue_url).await;
        if started >= 10 && held > 0 {
            break;
        }
        assert!(
            Instant::now() < give_up,
            "push did not start the jobs; see {}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    scheduler.kill(Signal::SIGKILL).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    scheduler = start_scheduler(&config, &log).await;
    world.wait_until_final(&jobs, &log).await;
    let took = began.elapsed();

    for job in &jobs {
        assert_eq!(
            world.emulator.job_state(*job),
            Some(JobState::Passed),
            "{:#}",
            world.timeline(*job)
        );
    }
    world.assert_each_acquired_once(&jobs);
    let give_up = Instant::now() + Duration::from_secs(20);
    loop {
        let (visible, held) = messages(&sqs, &queue_url).await;
        if visible + held == 0 {
            break;
        }
        assert!(
            Instant::now() < give_up,
            "{visible} + {held} messages were never deleted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    scheduler.kill(Signal::SIGTERM).await;
    let delivered = target.delivered.load(Ordering::SeqCst);
    assert!(delivered >= 60, "{delivered} events delivered");
    let scheduler_log = std::fs::read_to_string(&log).unwrap();
    assert!(
        scheduler_log.contains("taking push events from SQS"),
        "{scheduler_log}"
    );
    println!(
        "60 jobs pushed through SQS ({delivered} events, 30 % twice, one SIGKILL) in {took:?}"
    );
}
