//! A real S3-compatible server for integration tests: `s3s-fs` on a free loopback port.
//!
//! Shared by the tests of several crates, which include it with
//! `#[path = "…/vmtier-storage/tests/common/s3.rs"] mod s3;`. It needs only `std`, `tempfile`
//! and `vmtier_storage`.
//!
//! The binary comes from `$VMTIER_S3S_FS`, `PATH` or `~/.cargo/bin` (`scripts/s3-test-server.sh
//! install`). Without it a test fails with an explanation, unless `VMTIER_SKIP_S3=1`, which skips.

#![allow(dead_code)] // each including test uses a different part

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vmtier_storage::object::ObjectConfig;

/// Access key the server is started with.
pub const ACCESS_KEY: &str = "vmtier-test";
/// Secret key the server is started with.
pub const SECRET_KEY: &str = "vmtier-test-secret";
/// The one bucket the server has.
pub const BUCKET: &str = "vmtier-test";

/// An `s3s-fs` server on a free loopback port, killed on drop.
pub struct S3Server {
    child: Option<Child>,
    /// The port it listens on.
    pub port: u16,
    root: tempfile::TempDir,
    bin: PathBuf,
}

/// The `s3s-fs` binary: `$VMTIER_S3S_FS`, else `s3s-fs` in `PATH` or `~/.cargo/bin`.
pub fn find_s3s_fs() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("VMTIER_S3S_FS") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let home_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|c| c.join("bin"));
    std::env::split_paths(&path).chain(home_bin).map(|d| d.join("s3s-fs")).find(|p| p.is_file())
}

impl S3Server {
    /// Starts `bin` on a free port with one empty bucket and waits until it listens.
    pub fn start(bin: &Path) -> Self {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(root.path().join(BUCKET)).expect("create bucket directory");
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
        let mut server = Self { child: None, port, root, bin: bin.to_path_buf() };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let child = Command::new(&self.bin)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(self.root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not listen on port {} within 20 s", self.port);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server (kills it); its objects stay on disk for [`restart`](Self::restart).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port over the same objects.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Starts the server for test `test`, or returns `None` (after saying so) if `s3s-fs` is
    /// missing and `VMTIER_SKIP_S3=1`. Panics with install instructions if it is missing otherwise.
    pub fn start_or_skip(test: &str) -> Option<Self> {
        let Some(bin) = find_s3s_fs() else {
            if std::env::var("VMTIER_SKIP_S3").is_ok_and(|v| v == "1") {
                eprintln!("SKIPPED {test}: s3s-fs not found and VMTIER_SKIP_S3=1");
                return None;
            }
            panic!(
                "s3s-fs not found (looked at $VMTIER_S3S_FS, PATH and ~/.cargo/bin). Install it with \
                 `scripts/s3-test-server.sh install` (cargo install s3s-fs --version 0.14.1 --features \
                 binary --locked), or set VMTIER_SKIP_S3=1 to skip this test"
            );
        };
        Some(Self::start(&bin))
    }

    /// A tier-3 style configuration for `s3://vmtier-test/<prefix>` on this server.
    pub fn config(&self, prefix: &str) -> ObjectConfig {
        let mut cfg = ObjectConfig::new(format!("s3://{BUCKET}/{prefix}"));
        cfg.endpoint = Some(format!("http://127.0.0.1:{}", self.port));
        cfg.region = Some("us-east-1".into());
        cfg.access_key_id = Some(ACCESS_KEY.into());
        cfg.secret_access_key = Some(SECRET_KEY.into());
        cfg.allow_http = true;
        cfg
    }

    /// The directory holding the bucket's files (to damage objects behind the server's back).
    pub fn bucket_dir(&self) -> PathBuf {
        self.root.path().join(BUCKET)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}
