//! One Stacks API stack per served queue. A stack reserves and issues tokens only for jobs
//! of its own queue (reference §1.7), so a scheduler serving several queues registers one
//! stack for each, keyed `<stack_key>-<queue>`.

use crate::config::Config;
use std::collections::BTreeMap;
use updraft_buildkite::stacks::{RegisterStack, StacksClient};
use updraft_buildkite::{ApiError, ClientOptions};

pub fn stack_key(base: &str, queue: &str) -> String {
    format!("{base}-{queue}")
}

#[derive(Debug, Clone)]
pub struct StackSet {
    by_queue: BTreeMap<String, StacksClient>,
}

impl StackSet {
    pub fn new(config: &Config) -> Result<StackSet, ApiError> {
        let mut by_queue = BTreeMap::new();
        for queue in config.queues() {
            let client = StacksClient::new(
                &config.buildkite.endpoint,
                &config.buildkite.agent_token,
                &stack_key(&config.buildkite.stack_key, &queue),
                ClientOptions::default(),
            )?;
            by_queue.insert(queue, client);
        }
        if by_queue.is_empty() {
            return Err(ApiError::Config(
                "no fleet serves any queue, so there is no stack to register".into(),
            ));
        }
        Ok(StackSet { by_queue })
    }

    /// The stack of `queue`, or the first stack for a queue we do not serve (such jobs are
    /// only ever notified about, never reserved).
    pub fn for_queue(&self, queue: &str) -> &StacksClient {
        self.by_queue.get(queue).unwrap_or_else(|| self.any())
    }

    pub fn any(&self) -> &StacksClient {
        self.by_queue
            .values()
            .next()
            .expect("StackSet::new refuses an empty set")
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &StacksClient)> {
        self.by_queue.iter()
    }

    /// Register every stack; the first failure is returned with the stack's key.
    pub async fn register_all(&self) -> Result<(), (String, ApiError)> {
        for (queue, client) in &self.by_queue {
            let body = RegisterStack {
                key: client.key().to_string(),
                stack_type: "custom".into(),
                queue_key: queue.clone(),
                metadata: [(
                    "updraft_version".to_string(),
                    env!("CARGO_PKG_VERSION").to_string(),
                )]
                .into_iter()
                .collect(),
            };
            let stack = client
                .register(&body)
                .await
                .map_err(|e| (client.key().to_string(), e))?;
            tracing::info!(key = stack.key, queue, "stack registered");
        }
        Ok(())
    }
}
