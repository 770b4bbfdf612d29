//! The output stream of a process without a terminal: its stdout and stderr on one
//! stream connection ([`OUTPUT_STREAM_FD`]), as chunks in the order the guest read them
//! from the two pipes. Two connections would reach the host in order, but two relays on
//! the host could write them out in either order; one connection keeps
//! `echo out; echo err >&2` in that order for whoever reads both (Docker's attach).
//!
//! A chunk is a [`CHUNK_HEADER_LEN`]-byte header (the fd, 1 or 2, then the length as a
//! little-endian `u32`, at most [`MAX_CHUNK_LEN`]) and that many bytes. A chunk of length
//! 0 ends that fd (the process closed it); the end of the connection ends both.

use std::io::{self, Read};

/// The [`StreamHeader::fd`](crate::StreamHeader) of the output stream.
pub const OUTPUT_STREAM_FD: u8 = 3;
/// Bytes before each chunk's data.
pub const CHUNK_HEADER_LEN: usize = 5;
/// The longest chunk the host accepts.
pub const MAX_CHUNK_LEN: usize = 64 * 1024;

/// The header of a chunk of `len` bytes of `fd` (`len` 0: the end of `fd`).
pub fn chunk_header(fd: u8, len: usize) -> [u8; CHUNK_HEADER_LEN] {
    debug_assert!(len <= MAX_CHUNK_LEN);
    let [a, b, c, d] = (len as u32).to_le_bytes();
    [fd, a, b, c, d]
}

/// `data` as one whole chunk of `fd` (for writers that do not build chunks in place).
pub fn chunk(fd: u8, data: &[u8]) -> Vec<u8> {
    let mut v = chunk_header(fd, data.len()).to_vec();
    v.extend_from_slice(data);
    v
}

/// What the guest sent that is not an output stream.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("a chunk names fd {0}, not stdout (1) or stderr (2)")]
    UnknownFd(u8),
    #[error("a chunk of {0} bytes is longer than the limit of {MAX_CHUNK_LEN}")]
    TooLong(u32),
    #[error("the stream ends inside a chunk")]
    Truncated,
    #[error("reading the output stream: {0}")]
    Io(#[source] io::Error),
}

/// One chunk, as [`OutputReader::next_chunk`] reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chunk {
    /// `len` bytes of `fd`, now at the start of the caller's buffer.
    Data { fd: u8, len: usize },
    /// The process closed `fd`.
    End { fd: u8 },
}

/// Reads the chunks of an output stream (the host side).
pub struct OutputReader<R> {
    inner: R,
}

impl<R: Read> OutputReader<R> {
    pub fn new(inner: R) -> Self {
        Self { inner }
    }

    /// The next chunk, its data read into `buf` (at least [`MAX_CHUNK_LEN`] long);
    /// `None` at the end of the stream.
    pub fn next_chunk(&mut self, buf: &mut [u8]) -> Result<Option<Chunk>, OutputError> {
        let mut header = [0u8; CHUNK_HEADER_LEN];
        if !read_full(&mut self.inner, &mut header, true)? {
            return Ok(None);
        }
        let fd = header[0];
        if fd != 1 && fd != 2 {
            return Err(OutputError::UnknownFd(fd));
        }
        let len = u32::from_le_bytes([header[1], header[2], header[3], header[4]]);
        if len as usize > MAX_CHUNK_LEN || len as usize > buf.len() {
            return Err(OutputError::TooLong(len));
        }
        let len = len as usize;
        if len == 0 {
            return Ok(Some(Chunk::End { fd }));
        }
        read_full(&mut self.inner, &mut buf[..len], false)?;
        Ok(Some(Chunk::Data { fd, len }))
    }

    /// The stream, for reading what is left of it.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

/// Fills `buf`; `false` if the stream ended before its first byte and `may_end`.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8], may_end: bool) -> Result<bool, OutputError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) if got == 0 && may_end => return Ok(false),
            Ok(0) => return Err(OutputError::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(OutputError::Io(e)),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(wire: &[u8]) -> Result<Vec<(Chunk, Vec<u8>)>, OutputError> {
        let mut r = OutputReader::new(wire);
        let mut buf = vec![0u8; MAX_CHUNK_LEN];
        let mut out = Vec::new();
        while let Some(c) = r.next_chunk(&mut buf)? {
            let data = match c {
                Chunk::Data { len, .. } => buf[..len].to_vec(),
                Chunk::End { .. } => Vec::new(),
            };
            out.push((c, data));
        }
        Ok(out)
    }

    #[test]
    fn chunks_come_back_in_order_with_their_ends() {
        let wire: Vec<u8> = [(1, &b"out\n"[..]), (2, b"err\n"), (1, b""), (2, b"more\n")]
            .into_iter()
            .flat_map(|(fd, data)| chunk(fd, data))
            .collect();
        let got = chunks(&wire).unwrap();
        assert_eq!(
            got,
            vec![
                (Chunk::Data { fd: 1, len: 4 }, b"out\n".to_vec()),
                (Chunk::Data { fd: 2, len: 4 }, b"err\n".to_vec()),
                (Chunk::End { fd: 1 }, vec![]),
                (Chunk::Data { fd: 2, len: 5 }, b"more\n".to_vec()),
            ]
        );
    }

    #[test]
    fn a_guest_that_lies_gets_an_error() {
        assert!(matches!(
            chunks(&chunk_header(0, 1)),
            Err(OutputError::UnknownFd(0))
        ));
        let mut long = vec![1u8];
        long.extend_from_slice(&(MAX_CHUNK_LEN as u32 + 1).to_le_bytes());
        assert!(matches!(chunks(&long), Err(OutputError::TooLong(_))));
        let mut short = chunk(2, b"abc");
        short[1] = 10;
        assert!(matches!(chunks(&short), Err(OutputError::Truncated)));
        assert!(matches!(chunks(&[1, 0]), Err(OutputError::Truncated)));
        assert!(chunks(&[]).unwrap().is_empty());
    }
}
