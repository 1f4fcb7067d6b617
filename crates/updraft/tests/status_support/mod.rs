//! Support for the status page test: a headless Chromium runner, a reader for the rendered
//! page, and the launch processes (their tokens, and their clean-up).

pub mod chromium;
pub mod launches;
pub mod page;
