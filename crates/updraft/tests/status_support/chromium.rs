//! Headless Chromium as a test instrument: render a page and hand back its DOM, or a
//! screenshot, exactly as a browser sees it. Each run gets a fresh profile and its own process
//! group, so nothing is shared between runs and a hung browser is killed whole.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// Where Debian's `chromium` package puts the browser (`.ci/run` installs it).
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// A render of a small local page takes about a second; this only bounds a hung browser.
const RUN_LIMIT: Duration = Duration::from_secs(30);
const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];

pub struct Chromium {
    binary: PathBuf,
}

impl Chromium {
    /// The installed browser; panics (failing the test, never skipping it) when it is missing.
    pub fn installed() -> Chromium {
        let binary = PathBuf::from(CHROMIUM);
        assert!(
            binary.is_file(),
            "{CHROMIUM} is missing: this test renders the status page in headless Chromium. \
             Run .ci/run (it installs chromium with apt-get), or `apt-get install -y chromium`."
        );
        Chromium { binary }
    }

    /// The DOM of `url` after Chromium has loaded and rendered it.
    pub async fn dump_dom(&self, url: &str) -> String {
        let output = self.run(&["--dump-dom".to_string(), url.to_string()]).await;
        String::from_utf8(output).expect("Chromium's --dump-dom output is UTF-8")
    }

    /// A PNG screenshot of `url` in a `width`×`height` window, written to `png`.
    pub async fn screenshot(&self, url: &str, png: &Path, (width, height): (u32, u32)) {
        self.run(&[
            format!("--screenshot={}", png.display()),
            format!("--window-size={width},{height}"),
            url.to_string(),
        ])
        .await;
    }

    /// Run the browser with the common headless flags plus `args`; its stdout.
    async fn run(&self, args: &[String]) -> Vec<u8> {
        let profile = tempfile::tempdir().expect("a temporary Chromium profile directory");
        let mut command = tokio::process::Command::new(&self.binary);
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let child = command
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {}: {error}", self.binary.display()));
        let group = child.id().map(|pid| nix::unistd::Pid::from_raw(pid as i32));
        let output = match tokio::time::timeout(RUN_LIMIT, child.wait_with_output()).await {
            Ok(output) => output.expect("wait for Chromium"),
            Err(_) => {
                if let Some(group) = group {
                    let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
                }
                panic!("Chromium {args:?} did not finish within {RUN_LIMIT:?}");
            }
        };
        assert!(
            output.status.success(),
            "Chromium {args:?} failed with {}; its stderr:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        output.stdout
    }
}

/// The width and height a PNG file declares in its IHDR chunk, or why it is not a PNG.
pub fn png_dimensions(bytes: &[u8]) -> Result<(u32, u32), String> {
    if bytes.len() < 24 || bytes[..8] != PNG_SIGNATURE || &bytes[12..16] != b"IHDR" {
        return Err(format!(
            "expected a PNG (signature then IHDR chunk), got {} bytes starting {:?}",
            bytes.len(),
            &bytes[..bytes.len().min(16)]
        ));
    }
    let word =
        |at: usize| u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    Ok((word(16), word(20)))
}
