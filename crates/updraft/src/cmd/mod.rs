//! One module per subcommand; each turns its arguments into a call on a library crate.

pub mod agent;
pub mod bench;
pub mod demo;
pub mod emulator;
pub mod scheduler;

/// Logs go to stderr (stdout is for a command's own output, e.g. the emulator's address line);
/// `UPDRAFT_LOG` (or `RUST_LOG`) sets the filter, default `info`.
pub fn init_logging() {
    let filter = std::env::var("UPDRAFT_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_string());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
