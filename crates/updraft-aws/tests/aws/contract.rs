//! The backend contract (`updraft_backends::Backend`), one suite run against both AWS
//! backends: launching twice is one launch; a launch is listed as soon as `launch` returned
//! and by a backend opened later; stop ends it and says so; the deadline ends it; deleting
//! twice is fine, and a deleted launch is no longer listed.

use crate::support::{codebuild_fleet, ecs_fleet, finished, phase_of, World};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use updraft_aws::metrics::AwsMetrics;
use updraft_aws::{CodeBuildBackend, EcsBackend};
use updraft_backends::{Backend, LaunchOutcome, LaunchPhase};

/// Which backend a suite run is for.
#[derive(Clone, Copy)]
enum Platform {
    CodeBuild,
    Ecs,
}

async fn open(world: &World, platform: Platform) -> Arc<dyn Backend> {
    match platform {
        Platform::CodeBuild => {
            let fleets: BTreeMap<_, _> =
                [("fleet".to_string(), codebuild_fleet("ci", "acquire"))].into();
            Arc::new(
                CodeBuildBackend::codebuild(
                    &world.clients,
                    &world.settings,
                    fleets,
                    world.options(),
                    AwsMetrics::default(),
                )
                .await
                .expect("open"),
            )
        }
        Platform::Ecs => {
            let fleets: BTreeMap<_, _> = [("fleet".to_string(), ecs_fleet("acquire"))].into();
            Arc::new(
                EcsBackend::ecs(
                    &world.clients,
                    &world.settings,
                    fleets,
                    world.options(),
                    AwsMetrics::default(),
                )
                .await
                .expect("open"),
            )
        }
    }
}

async fn suite(platform: Platform) {
    let world = World::start().await;
    match platform {
        Platform::CodeBuild => world.create_project("ci").await,
        Platform::Ecs => world.create_ecs_definition().await,
    }
    let jobs = world.build("contract", "queue", "make", &[], 3);
    let sleep = vec!["sh".to_string(), "-c".to_string(), "sleep 60".to_string()];
    let mut specs = world.specs("queue", "fleet", &jobs, sleep).await;
    specs[2].deadline = Duration::from_secs(2);
    let backend = open(&world, platform).await;
    for spec in &specs {
        assert_eq!(
            backend.launch(spec).await.expect("launch"),
            LaunchOutcome::Started
        );
        assert!(
            phase_of(&*backend, &spec.name).await.is_some(),
            "listed as soon as launched"
        );
        assert_eq!(
            backend.launch(spec).await.expect("again"),
            LaunchOutcome::AlreadyExists
        );
    }

    let later = open(&world, platform).await;
    for spec in &specs {
        assert!(
            phase_of(&*later, &spec.name).await.is_some(),
            "a backend opened later lists {}",
            spec.name
        );
        assert_eq!(
            later.launch(spec).await.expect("again"),
            LaunchOutcome::AlreadyExists
        );
    }
    later.stop(&specs[0].name).await.expect("stop");
    for spec in [&specs[0], &specs[2]] {
        assert!(
            matches!(
                finished(&*later, &spec.name).await,
                LaunchPhase::Failed { .. }
            ),
            "{} was stopped (by request or by its deadline) and says it failed",
            spec.name
        );
    }
    for spec in &specs {
        later.delete(&spec.name).await.expect("delete");
        later.delete(&spec.name).await.expect("delete again");
        assert_eq!(phase_of(&*later, &spec.name).await, None);
        assert_eq!(
            phase_of(&*backend, &spec.name).await,
            None,
            "gone for every instance"
        );
    }
    match platform {
        Platform::CodeBuild => assert_eq!(world.bed.builds().len(), 3),
        Platform::Ecs => assert_eq!(world.bed.tasks().len(), 3),
    }
}

#[tokio::test]
async fn codebuild_keeps_the_backend_contract() {
    suite(Platform::CodeBuild).await;
}

#[tokio::test]
async fn ecs_keeps_the_backend_contract() {
    suite(Platform::Ecs).await;
}
