//! `vmtier serve` as a user runs it: a private socket, a second server refused, and a clean
//! shutdown on SIGTERM and SIGINT that removes the socket.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn serve(sock: &Path, dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vmtier"));
    c.args(["serve", "--socket"]).arg(sock).arg("--data-dir").arg(dir).stderr(Stdio::piped());
    c
}

fn wait_listening(sock: &Path, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(sock).is_err() {
        assert!(child.try_wait().unwrap().is_none(), "vmtier serve exited early");
        assert!(Instant::now() < deadline, "vmtier serve did not start listening");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stop(child: Child, signal: libc::c_int) -> String {
    // SAFETY: sends a signal to our own child process by its pid.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, signal) }, 0);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
    stderr
}

#[test]
fn serve_listens_privately_refuses_a_second_server_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("pager.sock");
    let mut first = serve(&sock, dir.path()).spawn().unwrap();
    wait_listening(&sock, &mut first);
    assert_eq!(std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777, 0o600);

    let second = serve(&sock, dir.path()).output().unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success());
    assert!(err.contains("another page server is listening"), "{err}");

    let stderr = stop(first, libc::SIGTERM);
    assert!(stderr.contains("SIGTERM") && stderr.contains("socket removed"), "{stderr}");
    assert!(!sock.exists(), "the socket file is removed");

    let mut again = serve(&sock, dir.path()).spawn().unwrap();
    wait_listening(&sock, &mut again);
    stop(again, libc::SIGINT);
    assert!(!sock.exists());
}

#[test]
fn serve_rejects_a_missing_memory_file() {
    let dir = tempfile::tempdir().unwrap();
    let out =
        serve(&dir.path().join("s.sock"), dir.path()).arg("--mem-file").arg(dir.path().join("nope")).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("cannot use the memory file") && err.contains("nope"), "{err}");
}

/// Kills its child when dropped, so a failed assertion leaves no server or VM running (which
/// would also hold the test's output pipe open).
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Connection directories (`conn-<pid>-<id>`) under `dir`.
fn conn_dirs(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("conn-"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_page_server_killed_at_random_points_never_hangs_its_vm_and_a_restarted_one_serves() {
    if std::fs::metadata("/dev/kvm").is_err() {
        eprintln!("SKIPPED: /dev/kvm is missing");
        return;
    }
    // Tier 2 uses O_DIRECT, which a tmpfs /tmp does not support: work beside the build.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let sock = dir.path().join("pager.sock");
    let data = dir.path().join("data");
    let cfg = dir.path().join("vm.toml");
    std::fs::write(&cfg, "[engine]\nmemory = \"32MiB\"\n[workload]\nkind = \"zipf\"\naccesses = 1000000000000\n")
        .unwrap();
    let vm = |cfg: &Path| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_vmtier"));
        c.args(["vm", "run", "--page-server"]).arg(&sock).arg("--config").arg(cfg);
        c.current_dir(dir.path()).stdout(Stdio::null()).stderr(Stdio::piped());
        c
    };
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() as u64;
    eprintln!("seed {seed}");
    let mut rng = seed;
    let mut next = || {
        rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        rng >> 33
    };
    for round in 0..12 {
        let mut server = KillOnDrop(serve(&sock, &data).spawn().unwrap());
        wait_listening(&sock, &mut server.0);
        let mut guest = KillOnDrop(vm(&cfg).spawn().unwrap());
        // Every third kill lands while the VM connects and the server starts its engine.
        let delay = if round % 3 == 0 { next() % 100 } else { 100 + next() % 1400 };
        std::thread::sleep(Duration::from_millis(delay));
        drop(server);
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = guest.0.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: the VM still runs 20 s after its page server was killed ({delay} ms in)"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(guest.0.stderr.as_mut().unwrap(), &mut err).unwrap();
        assert!(!status.success(), "round {round}: the VM cannot succeed without its pages: {err}");
        assert!(err.contains("page server"), "round {round} ({delay} ms): the error names the page server: {err}");
        eprintln!("round {round}: killed {delay} ms in; the VM said: {}", err.lines().last().unwrap_or(""));
    }
    // A restarted server replaces the stale socket, sweeps what the killed ones left, and serves.
    let mut server = KillOnDrop(serve(&sock, &data).spawn().unwrap());
    wait_listening(&sock, &mut server.0);
    let left = conn_dirs(&data.join("tier2"));
    assert!(left.is_empty(), "killed servers' connection directories are left: {left:?}");
    let short = dir.path().join("short.toml");
    std::fs::write(&short, "[engine]\nmemory = \"32MiB\"\n[workload]\nkind = \"zipf\"\naccesses = 20000\n").unwrap();
    let out = vm(&short).output().unwrap();
    assert!(out.status.success(), "a VM served by the restarted server: {}", String::from_utf8_lossy(&out.stderr));
    // SAFETY: sends a signal to our own child process, not yet reaped, by its pid.
    assert_eq!(unsafe { libc::kill(server.0.id() as libc::pid_t, libc::SIGTERM) }, 0);
    assert!(server.0.wait().unwrap().success(), "the restarted server stops cleanly on SIGTERM");
}
