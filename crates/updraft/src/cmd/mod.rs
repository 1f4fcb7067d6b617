//! One module per subcommand; each turns its arguments into a call on a library crate.

pub mod agent;
pub mod bench;
pub mod demo;
pub mod emulator;
pub mod scheduler;
pub mod sim;

/// Logs go to stderr (stdout is for a command's own output, e.g. the emulator's address line),
/// coloured only on a terminal. `UPDRAFT_LOG` (or `RUST_LOG`) sets the filter; otherwise the
/// subcommand's default applies.
pub fn init_logging(default_filter: &str) {
    use std::io::IsTerminal;
    let filter = std::env::var("UPDRAFT_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| default_filter.to_string());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}
