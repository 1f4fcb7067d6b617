mod support;
use async_trait::async_trait;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use updraft_backends::*;
use updraft_scheduler::{Config, Scheduler};

#[derive(Default, Clone)]
struct Noop(Arc<Mutex<Vec<LaunchStatus>>>);
#[async_trait]
impl Backend for Noop {
    fn kind(&self) -> &'static str { "noop" }
    async fn launch(&self, spec: &LaunchSpec) -> Result<LaunchOutcome, BackendError> {
        self.0.lock().unwrap().push(LaunchStatus { name: spec.name.clone(), fleet: spec.fleet.clone(), phase: LaunchPhase::Running, started_at: chrono::Utc::now() });
        Ok(LaunchOutcome::Started)
    }
    async fn stop(&self, _: &LaunchName) -> Result<(), BackendError> { Ok(()) }
    async fn list(&self) -> Result<Vec<LaunchStatus>, BackendError> { Ok(self.0.lock().unwrap().clone()) }
    async fn delete(&self, _: &LaunchName) -> Result<(), BackendError> { Ok(()) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe() {
    let emulator = support::emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = "steps:\n  - command: \"true\"\n    agents: {queue: linux}\n    parallelism: 5000\n  - command: \"true\"\n    agents: {queue: linux}\n    parallelism: 5000\n";
    emulator.create_pipeline("burst", yaml).unwrap();
    let fleets = "[[fleet]]\nname = \"linux\"\nqueue = \"linux\"\nmax_in_flight = 20000\n";
    let text = support::config_text(&emulator, dir.path(), fleets, "");
    let backend = Noop::default();
    let t = Instant::now();
    let b: std::collections::BTreeMap<String, Arc<dyn Backend>> = [("local".to_string(), Arc::new(backend.clone()) as Arc<dyn Backend>)].into();
    emulator.create_build("burst").unwrap();
    let s = Scheduler::start(Config::parse(&text).unwrap(), b).await.unwrap();
    eprintln!("started after {:?}", t.elapsed());
    while s.stats().launched < 10000 { tokio::time::sleep(Duration::from_millis(20)).await; assert!(t.elapsed() < Duration::from_secs(120), "{:?}", s.stats().launched); }
    eprintln!("10000 launched after {:?}", t.elapsed());
    s.shutdown().await.unwrap();
}
