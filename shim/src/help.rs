//! `runvm -h`, `runvm help [COMMAND]` and `runvm COMMAND -h`, laid out as runc's own help
//! (urfave/cli's: `NAME:`, `USAGE:`, `COMMANDS:`, `OPTIONS:`), since scripts and test
//! suites written for runc read it; an unknown command's help is runc's error and code.
//! The options of each command are read from the command-line parser, so they are always
//! the ones runvm accepts.

use clap::CommandFactory;

/// runvm's commands in runc's order: name, one line, usage arguments.
const COMMANDS: &[(&str, &str, &str)] = &[
    (
        "checkpoint",
        "checkpoint a running container (not supported by runvm: a VM is not checkpointed with CRIU)",
        "<container-id>",
    ),
    ("create", "create a container", "<container-id>"),
    (
        "delete",
        "delete any resources held by the container often used with detached container",
        "<container-id>",
    ),
    (
        "events",
        "display container events such as OOM notifications, cpu, memory, and IO usage statistics",
        "<container-id>",
    ),
    (
        "exec",
        "execute new process inside the container",
        "<container-id> <command> [command options]  || -p process.json <container-id>",
    ),
    (
        "kill",
        "kill sends the specified signal (default: SIGTERM) to the container's init process",
        "<container-id> [signal]",
    ),
    ("list", "lists containers started by runvm with the given root", ""),
    ("pause", "pause suspends all processes inside the container", "<container-id>"),
    ("ps", "ps displays the processes running inside a container", "<container-id> [ps options]"),
    (
        "restore",
        "restore a container from a previous checkpoint (not supported by runvm)",
        "<container-id>",
    ),
    ("resume", "resumes all processes that have been previously paused", "<container-id>"),
    ("run", "create and run a container", "<container-id>"),
    ("spec", "create a new specification file", ""),
    ("start", "executes the user defined process in a created container", "<container-id>"),
    ("state", "output the state of a container", "<container-id>"),
    ("update", "update container resource constraints", "<container-id>"),
    ("features", "show the enabled features", ""),
];

/// What to do with a command line that asks for help.
pub enum Help {
    /// Print this on stdout, exit 0.
    Show(String),
    /// runc's answer for a command that does not exist: on stderr, exit 3.
    NoTopic(String),
}

/// The help the arguments (without argv[0]) ask for, if any: `-h`/`--help` anywhere
/// before `--` or the command's own arguments, `help [COMMAND]`, or no arguments at all.
pub fn requested(args: &[String]) -> Option<Help> {
    let words: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .take_while(|a| *a != "--")
        .collect();
    let command = first_command(&words);
    // `-h` counts before the command and among the command's own options, not after its
    // first argument (`runvm exec c1 ls -h` runs `ls -h`, as with runc).
    let mut seen_command = false;
    let asks = words
        .iter()
        .take_while(|w| {
            let keep = !seen_command || w.starts_with('-');
            if Some(**w) == command {
                seen_command = true;
            }
            keep
        })
        .any(|w| *w == "-h" || *w == "--help");
    match command {
        None if args.is_empty() || asks => Some(Help::Show(global())),
        Some("help" | "h") => {
            let topic = words
                .iter()
                .skip_while(|w| **w != "help" && **w != "h")
                .nth(1);
            Some(match topic {
                None => Help::Show(global()),
                Some(t) => for_command(t),
            })
        }
        Some(c) if asks => Some(for_command(c)),
        _ => None,
    }
}

/// The first word that is not a global option or its value.
fn first_command<'a>(words: &[&'a str]) -> Option<&'a str> {
    let mut it = words.iter();
    while let Some(w) = it.next() {
        match *w {
            "--log" | "--log-format" | "--root" | "--criu" | "--rootless" | "-l" | "-r" => {
                it.next();
            }
            w if w.starts_with('-') => {}
            w => return Some(w),
        }
    }
    None
}

fn for_command(name: &str) -> Help {
    match COMMANDS.iter().find(|(n, _, _)| *n == name) {
        Some((n, summary, usage)) => Help::Show(command(n, summary, usage)),
        None => Help::NoTopic(format!("No help topic for '{name}'")),
    }
}

fn global() -> String {
    let mut s = String::from(
        "NAME:\n   runvm - Open Container Initiative runtime that runs each container in its \
         own KVM microVM\n\n\
         runvm speaks runc's command line, so that Docker, Podman and containerd drive it \
         as they drive runc;\neach container's processes run behind a hardware \
         virtualization boundary, with a guest kernel of their own.\n\n\
         To start a new instance of a container:\n\n    # runvm run [ -b bundle ] <container-id>\n\n\
         USAGE:\n   runvm [global options] command [command options] [arguments...]\n\n",
    );
    s.push_str("VERSION:\n   ");
    s.push_str(&crate::version_text().replacen("runvm version ", "", 1));
    s.push_str("\nCOMMANDS:\n");
    let width = COMMANDS
        .iter()
        .map(|(n, _, _)| n.len())
        .max()
        .unwrap_or(0)
        .max(7);
    for (n, summary, _) in COMMANDS {
        s.push_str(&format!("   {n:width$}  {summary}\n"));
    }
    s.push_str(&format!(
        "   {:width$}  Shows a list of commands or help for one command\n\n",
        "help, h"
    ));
    s.push_str(
        "GLOBAL OPTIONS:\n   \
         --debug             enable debug logging\n   \
         --log value         set the log file to write runvm logs to (default is '/dev/stderr')\n   \
         --log-format value  set the log format ('text' (default), or 'json') (default: \"text\")\n   \
         --root value        root directory for storage of container state (this should be located in tmpfs) (default: \"/run/runvm\")\n   \
         --systemd-cgroup    enable systemd cgroup support, expects cgroupsPath to be of form \"slice:prefix:name\" for e.g. \"system.slice:runvm:434234\"\n   \
         --help, -h          show help\n   \
         --version, -v       print the version\n",
    );
    s
}

fn command(name: &str, summary: &str, usage: &str) -> String {
    let mut s = format!("NAME:\n   runvm {name} - {summary}\n\nUSAGE:\n   runvm {name}");
    let cli = crate::Cli::command();
    let options: Vec<(String, String)> = cli
        .get_subcommands()
        .find(|c| c.get_name() == name || (name == "checkpoint" && c.get_name() == "checkpointt"))
        .map(|c| {
            c.get_arguments()
                .filter(|a| !a.is_positional() && !a.is_hide_set())
                .filter(|a| a.get_long().is_some_and(|l| l != "help"))
                .map(|a| {
                    let mut flag = format!("--{}", a.get_long().unwrap_or_default());
                    let takes_value = a.get_action().takes_values();
                    if takes_value {
                        flag.push_str(" value");
                    }
                    if let Some(short) = a.get_short() {
                        flag.push_str(&format!(", -{short}"));
                        if takes_value {
                            flag.push_str(" value");
                        }
                    }
                    let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
                    (flag, help.replace('\n', " "))
                })
                .collect()
        })
        .unwrap_or_default();
    if !options.is_empty() {
        s.push_str(" [command options]");
    }
    if !usage.is_empty() {
        s.push(' ');
        s.push_str(usage);
    }
    s.push('\n');
    if usage.contains("<container-id>") {
        s.push_str("\nWhere \"<container-id>\" is the name for the instance of the container.\n");
    }
    if !options.is_empty() {
        s.push_str("\nOPTIONS:\n");
        let width = options.iter().map(|(f, _)| f.len()).max().unwrap_or(0);
        for (flag, help) in options {
            s.push_str(&format!("   {flag:width$}  {help}\n"));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    fn shown(a: &[&str]) -> String {
        match requested(&args(a)) {
            Some(Help::Show(s)) => s,
            Some(Help::NoTopic(t)) => panic!("{a:?}: no topic: {t}"),
            None => panic!("{a:?}: no help"),
        }
    }

    #[test]
    fn help_is_laid_out_as_runcs() {
        for a in [
            &["-h"][..],
            &["--help"],
            &[],
            &["--root", "/x", "-h"],
            &["help"],
        ] {
            let s = shown(a);
            let lines: Vec<&str> = s.lines().collect();
            assert_eq!(lines[0], "NAME:", "{a:?}");
            assert!(
                lines[1].starts_with("   runvm - Open Container Initiative runtime"),
                "{s}"
            );
            assert!(s.contains("\nCOMMANDS:\n   checkpoint  "), "{s}");
        }
        for (cmd, option) in [
            ("delete", "--force, -f"),
            ("exec", "--detach, -d"),
            ("list", "--format value, -f value"),
            ("run", "--bundle value, -b value"),
            ("kill", "--all, -a"),
        ] {
            for a in [
                &[cmd, "-h"][..],
                &[cmd, "--help"],
                &["help", cmd],
                &["--debug", cmd, "-h"],
            ] {
                let s = shown(a);
                let lines: Vec<&str> = s.lines().collect();
                assert_eq!(lines[0], "NAME:", "{a:?}");
                assert!(
                    lines[1].starts_with(&format!("   runvm {cmd} - ")),
                    "{a:?}: {s}"
                );
                assert!(s.contains(option), "{a:?}: {s}");
            }
        }
        for cmd in ["checkpoint", "restore", "spec", "state", "features"] {
            assert!(shown(&[cmd, "-h"])
                .lines()
                .nth(1)
                .unwrap()
                .contains(&format!("runvm {cmd}")));
        }
    }

    #[test]
    fn unknown_topics_and_plain_commands() {
        assert!(matches!(
            requested(&args(&["foo", "-h"])),
            Some(Help::NoTopic(t)) if t == "No help topic for 'foo'"
        ));
        // Not a help request: `-h` after `--` belongs to the container's command.
        assert!(requested(&args(&["exec", "c1", "--", "ls", "-h"])).is_none());
        assert!(requested(&args(&["exec", "c1", "ls", "-h"])).is_none());
        assert!(requested(&args(&["exec", "-t", "c1", "ls", "--help"])).is_none());
        assert!(requested(&args(&["state", "c1"])).is_none());
    }
}
