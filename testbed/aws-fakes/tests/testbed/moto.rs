//! moto through the SDK helpers, its control API, start-up errors, and clean shutdown.

use std::path::Path;
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_ssm::types::ParameterType;
use serde_json::json;
use updraft_aws_fakes::{s3_client, AwsTestBed, Moto, MotoError, Service};

use crate::helpers::{codebuild, create_project, ecs, process_gone, ssm};

#[tokio::test]
async fn ssm_s3_and_sqs_work_through_the_helpers() {
    let bed = AwsTestBed::start().await.unwrap();
    let ssm = ssm(&bed);
    ssm.put_parameter()
        .name("/p")
        .value("v")
        .r#type(ParameterType::String)
        .send()
        .await
        .unwrap();
    let got = ssm.get_parameter().name("/p").send().await.unwrap();
    assert_eq!(got.parameter().and_then(|p| p.value()), Some("v"));

    let s3 = s3_client(&bed.sdk_config_for(Service::S3));
    s3.create_bucket().bucket("artifacts").send().await.unwrap();
    s3.put_object()
        .bucket("artifacts")
        .key("logs/1.txt")
        .body(ByteStream::from_static(b"hello"))
        .send()
        .await
        .unwrap();
    let object = s3
        .get_object()
        .bucket("artifacts")
        .key("logs/1.txt")
        .send()
        .await
        .unwrap();
    assert_eq!(
        object.body.collect().await.unwrap().into_bytes().as_ref(),
        b"hello"
    );

    let sqs = aws_sdk_sqs::Client::new(&bed.sdk_config_for(Service::Sqs));
    let queue = sqs.create_queue().queue_name("jobs").send().await.unwrap();
    let url = queue.queue_url().unwrap();
    sqs.send_message()
        .queue_url(url)
        .message_body("job-1")
        .send()
        .await
        .unwrap();
    let received = sqs.receive_message().queue_url(url).send().await.unwrap();
    assert_eq!(received.messages()[0].body(), Some("job-1"));
}

#[tokio::test]
async fn the_control_api_resets_and_configures_moto() {
    let bed = AwsTestBed::start().await.unwrap();
    let moto = bed.moto();
    assert!(
        moto.started_in() < Duration::from_secs(10),
        "{:?}",
        moto.started_in()
    );
    let ssm = ssm(&bed);
    ssm.put_parameter()
        .name("/gone")
        .value("v")
        .r#type(ParameterType::String)
        .send()
        .await
        .unwrap();
    moto.reset().await.unwrap();
    let after = ssm.get_parameter().name("/gone").send().await.unwrap_err();
    assert!(after.into_service_error().is_parameter_not_found());
    let transition = json!({ "progression": "manual", "times": 3 });
    moto.set_transition("ecs::task", transition).await.unwrap();
    moto.config(json!({ "lambda": { "use_docker": false } }))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_missing_interpreter_is_named_in_the_error() {
    let python = Path::new("/nonexistent/bin/python");
    let error = match Moto::start_with(python).await {
        Err(error) => error,
        Ok(_) => panic!("moto started without an interpreter"),
    };
    assert!(matches!(error, MotoError::Spawn { .. }));
    assert!(
        error.to_string().contains("/nonexistent/bin/python"),
        "{error}"
    );
}

#[tokio::test]
async fn shutdown_leaves_no_process_behind() {
    let bed = AwsTestBed::start().await.unwrap();
    let pids = tempfile::tempdir().unwrap();
    let build_pids = pids.path().join("build");
    let task_pids = pids.path().join("task");
    let buildspec = format!(
        "version: 0.2\nphases:\n  build:\n    commands:\n      - sleep 300 & echo $! > {0}.tmp; echo $$ >> {0}.tmp; mv {0}.tmp {0}; sleep 300\n",
        build_pids.display()
    );
    let codebuild = codebuild(&bed);
    create_project(&codebuild, "lingering", &buildspec).await;
    codebuild
        .start_build()
        .project_name("lingering")
        .send()
        .await
        .unwrap();

    let ecs = ecs(&bed);
    ecs.create_cluster().send().await.unwrap();
    let script = format!(
        "sleep 300 & echo $! > {0}.tmp; echo $$ >> {0}.tmp; mv {0}.tmp {0}; wait",
        task_pids.display()
    );
    let container = aws_sdk_ecs::types::ContainerDefinition::builder()
        .name("main")
        .image("busybox")
        .set_command(Some(vec!["sh".into(), "-c".into(), script]))
        .build();
    ecs.register_task_definition()
        .family("lingering")
        .container_definitions(container)
        .send()
        .await
        .unwrap();
    ecs.run_task()
        .task_definition("lingering")
        .send()
        .await
        .unwrap();

    let mut processes = Vec::new();
    for file in [&build_pids, &task_pids] {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !file.exists() {
            assert!(
                Instant::now() < deadline,
                "{} never appeared",
                file.display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let text = std::fs::read_to_string(file).unwrap();
        processes.extend(text.lines().map(|pid| pid.trim().parse::<i32>().unwrap()));
    }
    processes.push(bed.moto().pid().unwrap() as i32);
    assert_eq!(processes.len(), 5);
    assert!(processes.iter().all(|pid| !process_gone(*pid)));

    bed.shutdown();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !processes.iter().all(|pid| process_gone(*pid)) {
        assert!(Instant::now() < deadline, "still alive: {processes:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
