//! A container's OCI status and what each operation may do in it: runc's rules, with
//! runc's error wording (Docker, containerd and Podman match on some of it), in one place.
//! Every verb asks its `can_*` method before it acts.

/// OCI status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainerStatus {
    Created,
    Running,
    Paused,
    Stopped,
}

/// An operation the container's status does not allow.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum StatusError {
    #[error("container not running")]
    NotRunning,
    #[error("container not paused")]
    NotPaused,
    #[error("cannot start an already running container")]
    StartRunning,
    #[error("cannot start a container that has stopped")]
    StartStopped,
    #[error("cannot delete container {id} that is not stopped: {status}")]
    DeleteNotStopped { id: String, status: &'static str },
    #[error("cannot exec in a stopped container")]
    ExecStopped,
    #[error("cannot exec in a created container: container not running")]
    ExecCreated,
    #[error("cannot exec in a paused container (resume it first)")]
    ExecPaused,
    #[error("container {id} is already paused")]
    AlreadyPaused { id: String },
    #[error(
        "cannot update container {id:?}: it is paused (its guest applies the limits: resume it first)"
    )]
    UpdatePaused { id: String },
}

impl ContainerStatus {
    /// The name in the OCI state document.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Stopped => "stopped",
        }
    }

    /// `start`: only a created container.
    pub fn can_start(self) -> Result<(), StatusError> {
        match self {
            Self::Created => Ok(()),
            Self::Running | Self::Paused => Err(StatusError::StartRunning),
            Self::Stopped => Err(StatusError::StartStopped),
        }
    }

    /// `kill`: any container that has not stopped (a created one too, as under runc).
    pub fn can_kill(self) -> Result<(), StatusError> {
        self.not_stopped()
    }

    /// `delete`: a stopped or created container; a running or paused one only with
    /// `--force`.
    pub fn can_delete(self, id: &str, force: bool) -> Result<(), StatusError> {
        match self {
            Self::Running | Self::Paused if !force => Err(StatusError::DeleteNotStopped {
                id: id.to_string(),
                status: self.as_str(),
            }),
            _ => Ok(()),
        }
    }

    /// `exec`: only a running container.
    pub fn can_exec(self) -> Result<(), StatusError> {
        match self {
            Self::Running => Ok(()),
            Self::Stopped => Err(StatusError::ExecStopped),
            Self::Created => Err(StatusError::ExecCreated),
            Self::Paused => Err(StatusError::ExecPaused),
        }
    }

    /// `pause`: only a running container.
    pub fn can_pause(self, id: &str) -> Result<(), StatusError> {
        match self {
            Self::Running => Ok(()),
            Self::Paused => Err(StatusError::AlreadyPaused { id: id.to_string() }),
            Self::Created | Self::Stopped => Err(StatusError::NotRunning),
        }
    }

    /// `resume`: only a paused container.
    pub fn can_resume(self) -> Result<(), StatusError> {
        match self {
            Self::Paused => Ok(()),
            Self::Running | Self::Created => Err(StatusError::NotPaused),
            Self::Stopped => Err(StatusError::NotRunning),
        }
    }

    /// `update`: only a running container (a paused guest cannot apply the limits).
    pub fn can_update(self, id: &str) -> Result<(), StatusError> {
        match self {
            Self::Running => Ok(()),
            Self::Paused => Err(StatusError::UpdatePaused { id: id.to_string() }),
            Self::Created | Self::Stopped => Err(StatusError::NotRunning),
        }
    }

    /// `ps`: asks the guest of a container that has not stopped (`ps` of a stopped one
    /// lists no process instead, as under runc).
    pub fn can_ps(self) -> Result<(), StatusError> {
        self.not_stopped()
    }

    /// `events`: a container that has not stopped.
    pub fn can_events(self) -> Result<(), StatusError> {
        self.not_stopped()
    }

    /// Whether the container has a process, whose pid `state` and `list` show.
    pub fn has_pid(self) -> bool {
        self != Self::Stopped
    }

    fn not_stopped(self) -> Result<(), StatusError> {
        if self.has_pid() {
            Ok(())
        } else {
            Err(StatusError::NotRunning)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ContainerStatus::{self, *};
    use super::StatusError;

    const ALL: [ContainerStatus; 4] = [Created, Running, Paused, Stopped];

    /// The error messages of `check` in each status, `""` where it is allowed.
    fn words(check: impl Fn(ContainerStatus) -> Result<(), StatusError>) -> [String; 4] {
        ALL.map(|s| check(s).err().map(|e| e.to_string()).unwrap_or_default())
    }

    #[test]
    fn lifecycle_verbs_follow_runc() {
        assert_eq!(
            words(ContainerStatus::can_start),
            [
                "",
                "cannot start an already running container",
                "cannot start an already running container",
                "cannot start a container that has stopped"
            ]
        );
        assert_eq!(
            words(ContainerStatus::can_kill),
            ["", "", "", "container not running"]
        );
        assert_eq!(
            words(|s| s.can_delete("c1", false)),
            [
                "",
                "cannot delete container c1 that is not stopped: running",
                "cannot delete container c1 that is not stopped: paused",
                ""
            ]
        );
        assert_eq!(words(|s| s.can_delete("c1", true)), ["", "", "", ""]);
    }

    #[test]
    fn verbs_on_a_live_container_follow_runc() {
        assert_eq!(
            words(ContainerStatus::can_exec),
            [
                "cannot exec in a created container: container not running",
                "",
                "cannot exec in a paused container (resume it first)",
                "cannot exec in a stopped container"
            ]
        );
        assert_eq!(
            words(|s| s.can_pause("c1")),
            [
                "container not running",
                "",
                "container c1 is already paused",
                "container not running"
            ]
        );
        assert_eq!(
            words(ContainerStatus::can_resume),
            [
                "container not paused",
                "container not paused",
                "",
                "container not running"
            ]
        );
        assert_eq!(
            words(|s| s.can_update("c1")),
            [
                "container not running",
                "",
                "cannot update container \"c1\": it is paused (its guest applies the limits: resume it first)",
                "container not running"
            ]
        );
        for check in [ContainerStatus::can_ps, ContainerStatus::can_events] {
            assert_eq!(words(check), ["", "", "", "container not running"]);
        }
    }
}
