//! `hookwire` run once as a command (`token`, `check-config`, a `serve` that must fail).

use std::process::{Command, Stdio};
use std::time::Duration;

use super::wait::WAIT;

/// Runs `hookwire` with these arguments and only these environment variables (plus `PATH`,
/// and listeners on port 0 in case it starts) and returns (exit code, stdout + stderr).
/// Panics if it has not exited within [`WAIT`].
pub fn run_hookwire(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    run_hookwire_in(&std::env::current_dir().unwrap(), args, env)
}

/// [`run_hookwire`] with `dir` as the working directory (e.g. one without `config/`).
pub fn run_hookwire_in(
    dir: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (i32, String) {
    run_hookwire_within(dir, args, env, WAIT)
}

/// [`run_hookwire_in`] allowed `wait` to exit (a command that compiles a large plugin
/// in the debug build takes seconds).
pub fn run_hookwire_within(
    dir: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
    wait: Duration,
) -> (i32, String) {
    use std::io::Read;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hookwire"));
    cmd.args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOOKWIRE_WS_ADDR", "127.0.0.1:0")
        .env("HOOKWIRE_ADMIN_ADDR", "127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("start hookwire");
    let readers: Vec<_> = [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ]
    .into_iter()
    .map(|mut pipe| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).to_string()
        })
    })
    .collect();
    let deadline = std::time::Instant::now() + wait;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("hookwire {args:?} did not exit within {wait:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = readers
        .into_iter()
        .map(|r| r.join().unwrap())
        .collect::<String>();
    (status.code().unwrap_or(-1), text)
}
