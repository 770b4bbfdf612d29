//! runc-style logging: `--log FILE` (appended, never truncated: Docker passes the same
//! file to every call and reads the last `level=error` line), `--log-format text|json`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

struct Logger {
    file: Option<Mutex<File>>,
    format: Format,
    level: log::LevelFilter,
}

/// RFC 3339 UTC timestamp, as runc's logrus writes it.
pub fn rfc3339_now() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

/// A level as logrus (runc's logger) names it.
fn level_name(level: log::Level) -> &'static str {
    match level {
        log::Level::Error => "error",
        log::Level::Warn => "warning",
        log::Level::Info => "info",
        log::Level::Debug => "debug",
        log::Level::Trace => "trace",
    }
}

fn line(format: Format, level: log::Level, msg: &str) -> String {
    let level = level_name(level);
    match format {
        Format::Json => format!(
            "{}\n",
            serde_json::json!({ "level": level, "msg": msg, "time": rfc3339_now() })
        ),
        Format::Text => format!("time=\"{}\" level={level} msg={msg:?}\n", rfc3339_now()),
    }
}

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= self.level
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let msg = record.args().to_string();
        match &self.file {
            Some(f) => {
                let mut f = f.lock().unwrap_or_else(|e| e.into_inner());
                let _ = f.write_all(line(self.format, record.level(), &msg).as_bytes());
            }
            None => {
                // Without --log, records go to stderr as runc's go there (logrus lines:
                // `time=… level=debug msg=…`): warnings always, the rest with --debug.
                if record.level() <= log::Level::Warn || self.level >= log::LevelFilter::Debug {
                    eprint!("{}", line(self.format, record.level(), &msg));
                }
            }
        }
    }

    fn flush(&self) {}
}

/// Why the logger could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("unknown --log-format {0:?}: use text or json")]
    UnknownFormat(String),
    #[error("cannot open log file {}: {source}", path.display())]
    Open {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    AlreadySet(#[source] log::SetLoggerError),
}

/// Installs the logger. Errors opening the log file are reported on stderr and logging
/// falls back to stderr.
pub fn init(path: Option<&Path>, format: Option<&str>, debug: bool) -> Result<(), LogError> {
    let format = match format {
        None | Some("text") => Format::Text,
        Some("json") => Format::Json,
        Some(other) => return Err(LogError::UnknownFormat(other.to_string())),
    };
    let file = match path {
        Some(p) => Some(Mutex::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|source| LogError::Open {
                    path: p.to_path_buf(),
                    source,
                })?,
        )),
        None => None,
    };
    let level = if debug {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Info
    };
    log::set_boxed_logger(Box::new(Logger {
        file,
        format,
        level,
    }))
    .map_err(LogError::AlreadySet)?;
    log::set_max_level(level);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_are_what_docker_parses() {
        let l = line(
            Format::Json,
            log::Level::Error,
            "container \"x\" does not exist",
        );
        let v: serde_json::Value = serde_json::from_str(l.trim()).unwrap();
        assert_eq!(v["level"], "error");
        assert_eq!(v["msg"], "container \"x\" does not exist");
        let t = v["time"].as_str().unwrap();
        assert_eq!(t.len(), 30, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z'));
    }
}
