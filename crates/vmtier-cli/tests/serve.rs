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
