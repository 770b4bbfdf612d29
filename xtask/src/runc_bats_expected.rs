//! The record of what runvm is expected to do in runc's bats suite, file by file and test
//! by test (`xtask/runc-bats-expected.json`), and the check of a run against it.
//!
//! A test is named as bats names it (the text after `@test`), within its file. The record
//! holds, per file, the tests runvm passes, fails and skips, and a reason (`why`) for each
//! test runvm does not pass where runc does. The check fails on:
//! - a test the record says runvm passes that does not pass now (a regression, whatever
//!   runc does there);
//! - a test runc passes in the same run that runvm does not, unless the record says why
//!   (a new divergence must be a deliberate edit of the record; `UNEXPLAINED` is no reason);
//! - a file the record does not know.
//!
//! Tests that pass now but are not recorded as passing are reported, not failed: record
//! them with `cargo xtask runc-bats --record`. Files marked `flaky` (with the reason) have
//! their regressions reported, not failed.

use crate::util::Findings;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// One test's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Pass,
    Fail,
    Skip,
}

/// One runtime's results: file name → test name → outcome.
pub type Run = BTreeMap<String, BTreeMap<String, Outcome>>;

/// What runvm is expected to do in one file.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expected {
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub pass: BTreeSet<String>,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub fail: BTreeSet<String>,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub skip: BTreeSet<String>,
    /// Test name → why runvm does not pass it while runc does.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub why: BTreeMap<String, String>,
    /// Why the file's results vary from run to run: its regressions are reported, not failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flaky: Option<String>,
}

/// The whole record.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Record {
    pub about: String,
    pub files: BTreeMap<String, Expected>,
}

const ABOUT: &str = "What runvm is expected to do in runc's own integration suite (the bats \
    files of runc 1.1.5's tests/integration), per file and test name. `cargo xtask runc-bats \
    --check` fails on a test in `pass` that does not pass, and on a test runc passes that runvm \
    does not unless `why` gives the reason. `cargo xtask runc-bats --record` rewrites the lists \
    from a run and keeps every `why` and `flaky`; it writes UNEXPLAINED where a reason is \
    missing, which the check refuses: replace it by hand. See xtask/src/runc_bats_expected.rs.";

/// The placeholder `--record` writes where a reason is missing.
pub const UNEXPLAINED: &str = "UNEXPLAINED";

pub fn record_path() -> PathBuf {
    crate::util::repo_root()
        .join("xtask")
        .join("runc-bats-expected.json")
}

/// Whether a recorded reason is one (not the placeholder).
pub fn is_reason(why: &str) -> bool {
    !why.trim().is_empty() && !why.starts_with(UNEXPLAINED)
}

impl Record {
    pub fn load() -> Result<Record> {
        let path = record_path();
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading the runc bats expectations {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// A record of `runvm`'s results, keeping the reasons of `old` for every test runvm
    /// still does not pass; a test runc passes and runvm does not, that `old` has no reason
    /// for, gets the placeholder the check refuses. A test runc ran that runvm did not (its
    /// file stopped early) is recorded as failing. Files the run did not include (`--only`)
    /// keep their old record.
    pub fn from_run(old: &Record, runvm: &Run, runc: &Run) -> Record {
        let mut files = old.files.clone();
        for (file, tests) in runvm {
            let prev = old.files.get(file);
            let mut e = Expected {
                flaky: prev.and_then(|p| p.flaky.clone()),
                ..Default::default()
            };
            let rc = runc.get(file);
            let names: BTreeSet<&String> = tests
                .keys()
                .chain(rc.into_iter().flat_map(|r| r.keys()))
                .collect();
            for name in names {
                let now = tests.get(name).copied().unwrap_or(Outcome::Fail);
                match now {
                    Outcome::Pass => e.pass.insert(name.clone()),
                    Outcome::Fail => e.fail.insert(name.clone()),
                    Outcome::Skip => e.skip.insert(name.clone()),
                };
                if now == Outcome::Pass {
                    continue;
                }
                let runc_passes = rc.and_then(|r| r.get(name)) == Some(&Outcome::Pass);
                match prev.and_then(|p| p.why.get(name)) {
                    Some(why) => {
                        e.why.insert(name.clone(), why.clone());
                    }
                    None if runc_passes => {
                        e.why.insert(
                            name.clone(),
                            format!("{UNEXPLAINED}: say why runvm does not pass what runc passes"),
                        );
                    }
                    None => {}
                }
            }
            files.insert(file.clone(), e);
        }
        Record {
            about: ABOUT.to_string(),
            files,
        }
    }

    pub fn save(&self) -> Result<()> {
        let path = record_path();
        std::fs::write(&path, serde_json::to_string_pretty(self)? + "\n")
            .with_context(|| format!("writing {}", path.display()))
    }
}

fn outcome_word(o: Option<Outcome>) -> &'static str {
    match o {
        None => "did not run",
        Some(Outcome::Pass) => "passes",
        Some(Outcome::Fail) => "fails",
        Some(Outcome::Skip) => "skips",
    }
}

/// Checks runvm's results (and runc's, from the same run) against the record.
pub fn check(record: &Record, runvm: &Run, runc: &Run) -> Findings {
    let mut f = Findings::default();
    for (file, tests) in runvm {
        let Some(e) = record.files.get(file) else {
            f.failures.push(format!(
                "{file}: not in the record ({}); run `cargo xtask runc-bats --record` and review",
                record_path().display()
            ));
            continue;
        };
        let now = |name: &str| tests.get(name).copied();
        for name in &e.pass {
            if now(name) != Some(Outcome::Pass) {
                let msg = format!(
                    "{file}: \"{name}\" passed before and {} now",
                    outcome_word(now(name))
                );
                match &e.flaky {
                    Some(why) => f.notes.push(format!("{msg}; flaky: {why}")),
                    None => f.failures.push(msg),
                }
            }
        }
        let rc = runc.get(file);
        let runc_passed: BTreeSet<&String> = rc
            .into_iter()
            .flat_map(|r| r.iter())
            .filter(|(_, o)| **o == Outcome::Pass)
            .map(|(n, _)| n)
            .collect();
        for name in runc_passed {
            if now(name) == Some(Outcome::Pass) || e.pass.contains(name) {
                continue;
            }
            if !e.why.get(name).is_some_and(|w| is_reason(w)) {
                f.failures.push(format!(
                    "{file}: runc passes \"{name}\" and runvm {}, with no reason in the record",
                    outcome_word(now(name))
                ));
            }
        }
        for (name, o) in tests {
            if *o == Outcome::Pass && !e.pass.contains(name) {
                f.notes.push(format!(
                    "{file}: \"{name}\" passes now and is not recorded as passing: record it \
                     (`cargo xtask runc-bats --record`)"
                ));
            }
        }
    }
    for file in record.files.keys() {
        if !runvm.contains_key(file) {
            f.notes.push(format!("{file}: in the record but not run"));
        }
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use Outcome::*;

    fn run(v: &[(&str, &[(&str, Outcome)])]) -> Run {
        v.iter()
            .map(|(file, tests)| {
                (
                    file.to_string(),
                    tests.iter().map(|(n, o)| (n.to_string(), *o)).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn a_test_that_passed_before_and_fails_now_fails_the_check() {
        let rc = run(&[("a.bats", &[("x", Fail), ("y", Fail)])]);
        let vm = run(&[("a.bats", &[("x", Pass), ("y", Fail)])]);
        let rec = Record::from_run(&Record::default(), &vm, &rc);
        assert!(check(&rec, &vm, &rc).failures.is_empty());
        // runc fails it too: still a regression of runvm.
        let f = check(&rec, &run(&[("a.bats", &[("x", Fail), ("y", Fail)])]), &rc);
        assert_eq!(
            f.failures,
            vec!["a.bats: \"x\" passed before and fails now"]
        );
        // A test that did not run at all (its file stopped early) is a regression too.
        let f = check(&rec, &run(&[("a.bats", &[("y", Fail)])]), &rc);
        assert_eq!(
            f.failures,
            vec!["a.bats: \"x\" passed before and did not run now"]
        );
        // Unless the file is known to be flaky.
        let mut flaky = rec;
        flaky.files.get_mut("a.bats").unwrap().flaky = Some("timing".into());
        let f = check(&flaky, &run(&[("a.bats", &[("y", Fail)])]), &rc);
        assert!(f.failures.is_empty() && f.notes.len() == 1, "{f:?}");
    }

    #[test]
    fn a_divergence_from_runc_needs_a_reason() {
        let rc = run(&[("a.bats", &[("x", Pass), ("y", Pass), ("z", Fail)])]);
        let vm = run(&[("a.bats", &[("x", Pass), ("y", Fail), ("z", Fail)])]);
        let rec = Record::from_run(&Record::default(), &vm, &rc);
        let e = &rec.files["a.bats"];
        assert!(e.why["y"].starts_with(UNEXPLAINED));
        // Both fail z: no reason is asked for.
        assert!(!e.why.contains_key("z"));
        let f = check(&rec, &vm, &rc);
        assert_eq!(
            f.failures,
            vec!["a.bats: runc passes \"y\" and runvm fails, with no reason in the record"]
        );
        let mut rec = rec;
        rec.files
            .get_mut("a.bats")
            .unwrap()
            .why
            .insert("y".into(), "the VM boundary".into());
        assert!(check(&rec, &vm, &rc).failures.is_empty());
        // The reason survives a re-record while runvm still fails the test ...
        let again = Record::from_run(&rec, &vm, &rc);
        assert_eq!(again.files["a.bats"].why["y"], "the VM boundary");
        // ... even in a run where runc fails it too; and goes once runvm passes it.
        let rc_fails = run(&[("a.bats", &[("x", Pass), ("y", Fail), ("z", Fail)])]);
        let again = Record::from_run(&rec, &vm, &rc_fails);
        assert_eq!(again.files["a.bats"].why["y"], "the VM boundary");
        let again = Record::from_run(&rec, &rc, &rc);
        assert!(again.files["a.bats"].why.is_empty());
        // A skip where runc passes is a divergence as well.
        let vm_skips = run(&[("a.bats", &[("x", Pass), ("y", Skip), ("z", Fail)])]);
        let rec = Record::from_run(&Record::default(), &vm, &rc);
        assert_eq!(check(&rec, &vm_skips, &rc).failures.len(), 1);
    }

    #[test]
    fn a_test_runvm_did_not_run_is_recorded_as_failing_and_needs_a_reason() {
        let rc = run(&[("a.bats", &[("x", Pass), ("y", Pass)])]);
        let vm = run(&[("a.bats", &[("x", Pass)])]);
        let rec = Record::from_run(&Record::default(), &vm, &rc);
        assert!(rec.files["a.bats"].fail.contains("y"));
        let f = check(&rec, &vm, &rc);
        assert_eq!(
            f.failures,
            vec!["a.bats: runc passes \"y\" and runvm did not run, with no reason in the record"]
        );
    }

    #[test]
    fn unknown_files_fail_and_improvements_are_noted() {
        let rc = run(&[("a.bats", &[("x", Pass)])]);
        let rec = Record::from_run(&Record::default(), &run(&[("a.bats", &[("x", Fail)])]), &rc);
        let vm = run(&[("a.bats", &[("x", Pass)]), ("b.bats", &[("x", Pass)])]);
        let f = check(&rec, &vm, &rc);
        assert_eq!(f.failures.len(), 1, "{f:?}");
        assert!(f.failures[0].starts_with("b.bats: not in the record"));
        assert!(f
            .notes
            .iter()
            .any(|n| n.starts_with("a.bats: \"x\" passes now and is not recorded")));
    }

    #[test]
    fn a_run_of_some_files_keeps_the_record_of_the_others() {
        let rc = run(&[("a.bats", &[("x", Pass)]), ("b.bats", &[("y", Pass)])]);
        let vm = run(&[("a.bats", &[("x", Fail)]), ("b.bats", &[("y", Pass)])]);
        let mut old = Record::from_run(&Record::default(), &vm, &rc);
        old.files
            .get_mut("a.bats")
            .unwrap()
            .why
            .insert("x".into(), "a reason".into());
        let only_b = run(&[("b.bats", &[("y", Fail)])]);
        let rec = Record::from_run(&old, &only_b, &rc);
        assert_eq!(rec.files["a.bats"], old.files["a.bats"]);
        assert!(rec.files["b.bats"].fail.contains("y"));
    }

    #[test]
    fn the_record_reads_back_what_it_wrote() {
        let rc = run(&[("a.bats", &[("x", Pass), ("y", Pass), ("s", Skip)])]);
        let vm = run(&[("a.bats", &[("x", Pass), ("y", Fail), ("s", Skip)])]);
        let rec = Record::from_run(&Record::default(), &vm, &rc);
        let text = serde_json::to_string_pretty(&rec).unwrap();
        let back: Record = serde_json::from_str(&text).unwrap();
        let e = &back.files["a.bats"];
        assert_eq!(e.pass.iter().collect::<Vec<_>>(), ["x"]);
        assert_eq!(e.fail.iter().collect::<Vec<_>>(), ["y"]);
        assert_eq!(e.skip.iter().collect::<Vec<_>>(), ["s"]);
        assert!(!is_reason(&e.why["y"]));
        assert!(is_reason("runvm has no checkpoint"));
    }
}
