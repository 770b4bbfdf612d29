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

/// Opens an output FIFO of containerd's ("" is none: /dev/null).
pub fn open_output(path: &str) -> std::io::Result<File> {
    // Read and write: opening a FIFO so never waits for its reader, and containerd
    // reads until every writer (runvm's monitor, which outlives the shim's call) is gone.
    let path = if path.is_empty() { "/dev/null" } else { path };
    OpenOptions::new().read(true).write(true).open(path)
}

/// Copies containerd's stdin FIFO at `path` into `into` until either ends or the feed is
/// closed.
pub fn feed_from_fifo(path: &str, into: File) -> StdinFeed {
    let feed = StdinFeed(Arc::new(Mutex::new(Some(into))));
    let path = path.to_string();
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
    feed
}

/// Opens the stdio of a process from containerd's paths ("" is none: /dev/null).
pub fn open(stdin: &str, stdout: &str, stderr: &str) -> std::io::Result<(ProcessStdio, StdinFeed)> {
    let stdout = open_output(stdout)?;
    let stderr = open_output(stderr)?;
    let (stdin, feed) = if stdin.is_empty() {
        (File::open("/dev/null")?, StdinFeed::default())
    } else {
        let (read, write) = std::io::pipe()?;
        let feed = feed_from_fifo(stdin, File::from(std::os::fd::OwnedFd::from(write)));
        (File::from(std::os::fd::OwnedFd::from(read)), feed)
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

/// The stdio of a process with a terminal: runvm's own, as its output is the pty's.
pub fn none() -> std::io::Result<ProcessStdio> {
    Ok(ProcessStdio {
        stdin: File::open("/dev/null")?,
        stdout: open_output("")?,
        stderr: open_output("")?,
    })
}
