//! A process's stdio from the paths containerd gives (FIFOs it reads and writes, or
//! nothing): stdout and stderr are handed to runvm as they are; stdin goes through a pipe
//! the shim feeds, so that `CloseIO` can end it while containerd's FIFO stays open.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

use crate::runvm::ProcessStdio;

/// The shim's end of a process's stdin: closing it is EOF for the process.
#[derive(Clone, Default)]
pub struct StdinFeed(Arc<Mutex<Option<File>>>);

impl StdinFeed {
    /// Ends the process's stdin (`CloseIO`).
    pub fn close(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    fn write(&self, bytes: &[u8]) -> bool {
        let mut w = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match w.as_mut() {
            Some(f) => f.write_all(bytes).is_ok(),
            None => false,
        }
    }
}

/// Opens the stdio of a process from containerd's paths ("" is none: /dev/null).
pub fn open(stdin: &str, stdout: &str, stderr: &str) -> std::io::Result<(ProcessStdio, StdinFeed)> {
    // Read and write: opening a FIFO so never waits for its reader, and containerd
    // reads until every writer (runvm's monitor, which outlives this call) is gone.
    let output = |path: &str| -> std::io::Result<File> {
        let path = if path.is_empty() { "/dev/null" } else { path };
        OpenOptions::new().read(true).write(true).open(path)
    };
    let stdout = output(stdout)?;
    let stderr = output(stderr)?;
    let feed = StdinFeed::default();
    let stdin = if stdin.is_empty() {
        File::open("/dev/null")?
    } else {
        let (read, write) = std::io::pipe()?;
        *feed.0.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(File::from(std::os::fd::OwnedFd::from(write)));
        let path = stdin.to_string();
        let theirs = feed.clone();
        // Opening the FIFO for reading waits for containerd to open it for writing.
        std::thread::spawn(move || {
            let Ok(mut fifo) = File::open(&path) else {
                theirs.close();
                return;
            };
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match fifo.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if !theirs.write(&buf[..n]) {
                            break;
                        }
                    }
                }
            }
            theirs.close();
        });
        File::from(std::os::fd::OwnedFd::from(read))
    };
    Ok((
        ProcessStdio {
            stdin,
            stdout,
            stderr,
        },
        feed,
    ))
}
