//! Pulling a container's image the way the kubelet reports it: `Pulling`/`Pulled` events, and
//! for a bad image `ErrImagePull` then `ImagePullBackOff` with doubling back-off, retried with
//! the bad-image rule in force at each attempt; `InvalidImageName` and `ErrImageNeverPull`
//! wait for good.

use super::{lock, wait_for_stop, PodWorker, Slot, StopRequest, MAX_BACKOFF};
use crate::kubelet::image::ImageRef;
use crate::kubelet::status::State;
use crate::meta;
use std::time::Instant;
use tokio::sync::watch;

impl PodWorker {
    /// Pulls the container's image per its pull policy; `false` when stopped first (a bad or
    /// unparsable image keeps it waiting until then).
    pub(super) async fn pull_image(
        &self,
        slot: Slot,
        stop: &mut watch::Receiver<Option<StopRequest>>,
    ) -> bool {
        let image = self.container(slot).image;
        let parsed = match ImageRef::parse(&image) {
            Ok(parsed) => parsed,
            Err(message) => {
                self.update_container(slot, |c| {
                    c.state = State::waiting("InvalidImageName", Some(message.clone()))
                });
                self.event(Some(slot), true, "InspectFailed", &message);
                self.event(Some(slot), true, "Failed", "Error: InvalidImageName");
                wait_for_stop(stop).await;
                return false;
            }
        };
        let normalized = parsed.normalized();
        let present = lock(&self.shared.pulled).contains(&normalized);
        let policy = meta::str_at(self.spec(slot), "/imagePullPolicy").unwrap_or("IfNotPresent");
        let pulled = (normalized.clone(), parsed.image_id());
        if present && policy != "Always" {
            self.update_container(slot, |c| c.pulled = Some(pulled));
            self.event(
                Some(slot),
                false,
                "Pulled",
                &format!("Container image \"{image}\" already present on machine"),
            );
            return true;
        }
        if policy == "Never" {
            let message =
                format!("Container image \"{image}\" is not present with pull policy of Never");
            self.update_container(slot, |c| {
                c.state = State::waiting("ErrImageNeverPull", Some(message.clone()))
            });
            self.event(Some(slot), true, "ErrImageNeverPull", &message);
            wait_for_stop(stop).await;
            return false;
        }
        let options = &self.shared.cluster.options;
        let mut backoff = options.image_pull_backoff;
        loop {
            self.event(
                Some(slot),
                false,
                "Pulling",
                &format!("Pulling image \"{image}\""),
            );
            let rule = self.shared.cluster.bad_images();
            let Some(failure) = parsed.pull_failure(&image, &rule) else {
                let began = Instant::now();
                if !Self::pause(options.image_pull_delay, stop).await {
                    return false;
                }
                let took = format!("{:.3}s", began.elapsed().as_secs_f64());
                lock(&self.shared.pulled).insert(normalized);
                self.update_container(slot, |c| c.pulled = Some(pulled));
                self.event(
                    Some(slot),
                    false,
                    "Pulled",
                    &format!("Successfully pulled image \"{image}\" in {took} ({took} including waiting). Image size: 0 bytes."),
                );
                return true;
            };
            self.update_container(slot, |c| {
                c.state = State::waiting("ErrImagePull", Some(failure.clone()))
            });
            self.event(
                Some(slot),
                true,
                "Failed",
                &format!("Failed to pull image \"{image}\": {failure}"),
            );
            self.event(Some(slot), true, "Failed", "Error: ErrImagePull");
            if !Self::pause(options.image_pull_backoff, stop).await {
                return false;
            }
            let back_off = format!("Back-off pulling image \"{image}\"");
            self.update_container(slot, |c| {
                c.state = State::waiting("ImagePullBackOff", Some(back_off.clone()))
            });
            self.event(Some(slot), false, "BackOff", &back_off);
            self.event(Some(slot), true, "Failed", "Error: ImagePullBackOff");
            if !Self::pause(backoff, stop).await {
                return false;
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}
