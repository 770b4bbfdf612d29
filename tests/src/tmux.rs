//! A tmux session in a pane of a given size, for driving a terminal program (`docker run
//! -it`, `docker exec -it`, `runvm run` with a terminal) like a user at a terminal.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::docker::{run_cmd_quiet, Out};
use crate::wait_for;

/// A tmux session running one command line; the line's exit code is kept in a file.
pub struct Tmux {
    socket: PathBuf,
    code_file: PathBuf,
}

impl Tmux {
    /// Starts `command` (a shell command line) in a detached `cols`×`rows` session.
    pub fn start(dir: &Path, command: &str, cols: u16, rows: u16) -> Tmux {
        // A socket of its own for every session: a new server on the socket of one just
        // killed (the `kill-server` of the previous session's drop) can meet that one
        // still exiting ("server exited unexpectedly").
        static SESSIONS: AtomicUsize = AtomicUsize::new(0);
        let n = SESSIONS.fetch_add(1, Ordering::Relaxed);
        let socket = dir.join(format!("tmux-{n}.sock"));
        let code_file = dir.join(format!("tmux-{n}.code"));
        let _ = std::fs::remove_file(&code_file);
        let line = format!(
            "{command}; echo $? > {}.tmp; mv {0}.tmp {0}; sleep 3600",
            code_file.display()
        );
        let t = Tmux { socket, code_file };
        let out = t.tmux(&[
            "new-session",
            "-d",
            "-s",
            "t",
            "-x",
            &cols.to_string(),
            "-y",
            &rows.to_string(),
            &line,
            // No status line: the pane is the whole cols×rows window.
            ";",
            "set-option",
            "-t",
            "t",
            "status",
            "off",
        ]);
        out.ok();
        t
    }

    fn tmux(&self, args: &[&str]) -> Out {
        let mut c = Command::new("tmux");
        c.arg("-S")
            .arg(&self.socket)
            .args(args)
            .env("TERM", "xterm");
        run_cmd_quiet(c, None, Duration::from_secs(30))
    }

    /// Types `text` literally, then Enter.
    pub fn type_line(&self, text: &str) {
        self.tmux(&["send-keys", "-t", "t", "-l", text]).ok();
        self.tmux(&["send-keys", "-t", "t", "Enter"]).ok();
    }

    /// Sends tmux key names (`C-c`, `C-d`).
    pub fn keys(&self, keys: &str) {
        self.tmux(&["send-keys", "-t", "t", keys]).ok();
    }

    /// The visible screen.
    pub fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-t", "t"]).stdout
    }

    /// Polls the screen until it satisfies `pred` (Ok, the screen) or `until` passes
    /// (Err, the last screen).
    fn poll_screen(&self, until: Instant, pred: &impl Fn(&str) -> bool) -> Result<String, String> {
        loop {
            let s = self.screen();
            if pred(&s) {
                return Ok(s);
            }
            if Instant::now() > until {
                return Err(s);
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Waits until the screen satisfies `pred`, returning it.
    #[track_caller]
    pub fn wait_screen(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        self.poll_screen(Instant::now() + timeout, &pred)
            .unwrap_or_else(|s| {
                let ended = std::fs::read_to_string(&self.code_file)
                    .map(|c| format!(" (the command has exited with {})", c.trim()))
                    .unwrap_or_default();
                panic!("timed out after {timeout:?} waiting for {what}{ended}; the screen:\n{s}")
            })
    }

    pub fn resize(&self, cols: u16, rows: u16) {
        self.tmux(&[
            "resize-window",
            "-t",
            "t",
            "-x",
            &cols.to_string(),
            "-y",
            &rows.to_string(),
        ])
        .ok();
    }

    /// Types `line` and waits for the screen to satisfy `pred`, typing it again every few
    /// seconds (for a state that changes on its own, e.g. a new window size travelling to
    /// the program), until `timeout`; returns the screen.
    #[track_caller]
    pub fn ask_until(
        &self,
        line: &str,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            self.type_line(line);
            let until = (Instant::now() + Duration::from_secs(3)).min(deadline);
            match self.poll_screen(until, &pred) {
                Ok(s) => return s,
                Err(s) if Instant::now() > deadline => panic!(
                    "timed out after {timeout:?} waiting for {what} (typing {line:?}); the screen:\n{s}"
                ),
                Err(_) => {}
            }
        }
    }

    /// Waits for the command to end; its exit code.
    #[track_caller]
    pub fn wait_exit(&self, timeout: Duration) -> i32 {
        wait_for("the tmux command to exit", timeout, || {
            std::fs::read_to_string(&self.code_file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
        })
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .arg("kill-server")
            .output();
    }
}
