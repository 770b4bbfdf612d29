//! A client for the Kubernetes Container Runtime Interface (CRI `runtime.v1`: the
//! `RuntimeService` and `ImageService` a kubelet calls) over a unix socket, generated from
//! Kubernetes' `api.proto` at build time (see `build.rs`), and a reader of the CRI
//! container log format. runvm uses it (through `runvm-crictl`) to test pods through
//! containerd's CRI plugin without cri-tools, which cannot be built here.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// The generated CRI messages and clients (`runtime.v1`).
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("runtime.v1");
}

pub use proto::image_service_client::ImageServiceClient;
pub use proto::runtime_service_client::RuntimeServiceClient;

/// The largest response accepted: the CRI lets `ExecSync` return 16 MiB of stdout and as
/// much stderr.
const MAX_RESPONSE_BYTES: usize = 40 * 1024 * 1024;

/// What can go wrong reaching a CRI endpoint.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The endpoint is not `unix:///path` or an absolute path.
    #[error("CRI endpoint {0:?} is not a unix socket: give unix:///path/to.sock or /path/to.sock")]
    NotUnix(String),
    /// Nothing answered on the socket.
    #[error("cannot connect to the CRI socket {path}: is the runtime (containerd) running there?")]
    Connect {
        path: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
}

/// The socket path of a CRI endpoint: `unix:///run/x.sock` or `/run/x.sock`.
pub fn socket_path(endpoint: &str) -> Result<PathBuf, ConnectError> {
    let path = endpoint.strip_prefix("unix://").unwrap_or(endpoint);
    if !path.starts_with('/') {
        return Err(ConnectError::NotUnix(endpoint.to_string()));
    }
    Ok(PathBuf::from(path))
}

/// Both CRI services on one connection.
#[derive(Clone, Debug)]
pub struct Cri {
    pub runtime: RuntimeServiceClient<Channel>,
    pub image: ImageServiceClient<Channel>,
}

impl Cri {
    /// Connects to the CRI socket at `endpoint`; every call then fails after `timeout`.
    pub async fn connect(endpoint: &str, timeout: Duration) -> Result<Cri, ConnectError> {
        let path = socket_path(endpoint)?;
        let connect_to = path.clone();
        // The URI is not used: every connection goes to the unix socket.
        let channel = Endpoint::from_static("http://cri.invalid")
            .connect_timeout(timeout)
            .timeout(timeout)
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let p = connect_to.clone();
                async move { UnixStream::connect(p).await.map(TokioIo::new) }
            }))
            .await
            .map_err(|source| ConnectError::Connect { path, source })?;
        Ok(Cri {
            runtime: RuntimeServiceClient::new(channel.clone())
                .max_decoding_message_size(MAX_RESPONSE_BYTES),
            image: ImageServiceClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES),
        })
    }
}

/// Which output stream a log line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One line of a CRI container log file:
/// `<RFC 3339 time> <stdout|stderr> <P|F> <content>` (`P`: the content continues on the
/// next line of the same stream, `F`: it ends a line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecord<'a> {
    pub time: &'a str,
    pub stream: Stream,
    pub partial: bool,
    pub content: &'a str,
}

/// A line of a container log file that is not in the CRI log format.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("log line {line}: {what} (not the CRI format `TIME STREAM P|F CONTENT`)")]
pub struct LogFormatError {
    /// 1-based line number in the file.
    pub line: usize,
    pub what: &'static str,
}

/// Parses one line (without its newline) of a CRI log file; `n` is its 1-based number.
pub fn parse_log_line(line: &str, n: usize) -> Result<LogRecord<'_>, LogFormatError> {
    let err = |what| LogFormatError { line: n, what };
    let (time, rest) = line.split_once(' ').ok_or(err("no time field"))?;
    if time.is_empty() || !time.contains('T') {
        return Err(err("the time is not RFC 3339"));
    }
    let (stream, rest) = rest.split_once(' ').ok_or(err("no stream field"))?;
    let stream = match stream {
        "stdout" => Stream::Stdout,
        "stderr" => Stream::Stderr,
        _ => return Err(err("the stream is neither stdout nor stderr")),
    };
    // The content may be empty: "TIME stdout F" ends an empty line.
    let (tag, content) = rest.split_once(' ').unwrap_or((rest, ""));
    let partial = match tag {
        "P" => true,
        "F" => false,
        _ => return Err(err("the tag is neither P nor F")),
    };
    Ok(LogRecord {
        time,
        stream,
        partial,
        content,
    })
}

/// The lines a container wrote, in order, from the text of its CRI log file, with the
/// partial records of each stream joined into whole lines (a partial line still open at
/// the end of the file is returned as it is).
pub fn read_log(text: &str) -> Result<Vec<(Stream, String)>, LogFormatError> {
    let mut lines = Vec::new();
    let mut open: [Option<String>; 2] = [None, None];
    for (i, l) in text.lines().enumerate() {
        let r = parse_log_line(l, i + 1)?;
        let slot = &mut open[usize::from(r.stream == Stream::Stderr)];
        let mut s = slot.take().unwrap_or_default();
        s.push_str(r.content);
        if r.partial {
            *slot = Some(s);
        } else {
            lines.push((r.stream, s));
        }
    }
    for (i, s) in open.into_iter().enumerate() {
        if let Some(s) = s {
            let stream = if i == 0 {
                Stream::Stdout
            } else {
                Stream::Stderr
            };
            lines.push((stream, s));
        }
    }
    Ok(lines)
}

/// A CRI log file that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum LogFileError {
    #[error("cannot read the container log {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the container log {path} is not in the CRI format")]
    Format {
        path: PathBuf,
        #[source]
        source: LogFormatError,
    },
}

/// Reads and parses a CRI log file (see [`read_log`]).
pub fn read_log_file(path: &Path) -> Result<Vec<(Stream, String)>, LogFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| LogFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    read_log(&text).map_err(|source| LogFileError::Format {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            socket_path("unix:///run/c.sock").unwrap(),
            PathBuf::from("/run/c.sock")
        );
        assert_eq!(
            socket_path("/run/c.sock").unwrap(),
            PathBuf::from("/run/c.sock")
        );
        assert!(matches!(
            socket_path("tcp://1.2.3.4:5"),
            Err(ConnectError::NotUnix(_))
        ));
        assert!(socket_path("run/c.sock").is_err());
    }

    #[test]
    fn log_lines_join_partials_per_stream() {
        let text = "2026-12-07T04:00:00.1Z stdout P hel\n\
                    2026-12-07T04:00:00.2Z stderr F oops: two  spaces\n\
                    2026-12-07T04:00:00.3Z stdout F lo\n\
                    2026-12-07T04:00:00.4Z stdout F\n\
                    2026-12-07T04:00:00.5Z stderr P tail";
        let got = read_log(text).unwrap();
        assert_eq!(
            got,
            vec![
                (Stream::Stderr, "oops: two  spaces".to_string()),
                (Stream::Stdout, "hello".to_string()),
                (Stream::Stdout, String::new()),
                (Stream::Stderr, "tail".to_string()),
            ]
        );
    }

    #[test]
    fn bad_log_lines_are_refused_with_their_number() {
        let e = read_log("2026-12-07T04:00:00Z stdout F ok\nnot a log line").unwrap_err();
        assert_eq!(e.line, 2);
        let e = parse_log_line("2026-12-07T04:00:00Z stdin F x", 7).unwrap_err();
        assert_eq!(e.what, "the stream is neither stdout nor stderr");
        let e = parse_log_line("2026-12-07T04:00:00Z stdout X x", 1).unwrap_err();
        assert_eq!(e.what, "the tag is neither P nor F");
    }

    #[test]
    fn messages_read_crictl_style_json() {
        let c: proto::ContainerConfig = serde_json::from_str(
            r#"{"metadata": {"name": "web"}, "image": {"image": "busybox"},
                "command": ["httpd"], "labels": {"a": "b"}, "log_path": "web.log"}"#,
        )
        .unwrap();
        assert_eq!(c.metadata.unwrap().name, "web");
        assert_eq!(c.image.unwrap().image, "busybox");
        assert_eq!(c.command, vec!["httpd"]);
        assert_eq!(c.labels["a"], "b");
        assert_eq!(c.log_path, "web.log");
        assert!(c.linux.is_none());
    }
}
