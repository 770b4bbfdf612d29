//! The record of what runvm is expected to do in the OCI validation suite, test point by
//! test point (`xtask/oci-expected.json`), and the check of a run against it.
//!
//! A test point is a program's top-level TAP result line, numbered in the order it was
//! printed (which is the TAP number for every program of the suite). The record holds,
//! per program, the points runvm passes, fails and skips, and a reason (`why`) wherever
//! runvm fails a point that runc passes. The check fails on:
//! - a point the record says runvm passes that does not pass now (a regression, in any
//!   program, whatever runc does there);
//! - a point runc passes in the same run that runvm fails, unless the record lists it as a
//!   failure and says why (a new divergence must be a deliberate edit of the record);
//! - a program the record does not know.
//!
//! Points that pass now but are recorded as failures are reported, not failed: record
//! them with `cargo xtask oci --record`. Programs marked `flaky` (with the reason) are
//! reported, not failed.

use crate::util::Findings;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// One test point's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Point {
    Pass,
    Fail,
    Skip,
    /// `not ok … # TODO`: an expected failure.
    Todo,
}

impl Point {
    pub fn letter(self) -> char {
        match self {
            Point::Pass => 'P',
            Point::Fail => 'F',
            Point::Skip => 'S',
            Point::Todo => 'T',
        }
    }
}

/// A set of point numbers, written as `1-4,7,9-12`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Points(pub BTreeSet<usize>);

impl fmt::Display for Points {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        let mut it = self.0.iter().copied().peekable();
        while let Some(start) = it.next() {
            let mut end = start;
            while it.peek() == Some(&(end + 1)) {
                end = it.next().unwrap_or(end);
            }
            parts.push(if start == end {
                start.to_string()
            } else {
                format!("{start}-{end}")
            });
        }
        f.write_str(&parts.join(","))
    }
}

impl std::str::FromStr for Points {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let mut set = BTreeSet::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            let (a, b): (usize, usize) = (
                a.trim()
                    .parse()
                    .with_context(|| format!("bad point {part:?}"))?,
                b.trim()
                    .parse()
                    .with_context(|| format!("bad point {part:?}"))?,
            );
            if a == 0 || b < a {
                bail!("bad point range {part:?}");
            }
            set.extend(a..=b);
        }
        Ok(Points(set))
    }
}

impl Serialize for Points {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Points {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What runvm is expected to do in one program.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Expected {
    #[serde(default, skip_serializing_if = "is_empty")]
    pub pass: Points,
    #[serde(default, skip_serializing_if = "is_empty")]
    pub fail: Points,
    #[serde(default, skip_serializing_if = "is_empty")]
    pub skip: Points,
    /// Why runvm fails points that runc passes (required when it does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    /// Why the program's result varies from run to run: its regressions are reported,
    /// not failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flaky: Option<String>,
}

fn is_empty(p: &Points) -> bool {
    p.0.is_empty()
}

/// The whole record.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Record {
    pub about: String,
    pub programs: BTreeMap<String, Expected>,
}

const ABOUT: &str = "What runvm is expected to do in the OCI validation suite, per program \
    and test point (numbered in the order printed). `cargo xtask test` fails on a point in \
    `pass` that fails, and on a point runc passes that runvm fails unless it is in `fail` with \
    a `why`. Edit deliberately: `cargo xtask oci --record` rewrites the points from a run and \
    keeps every `why` and `flaky`; a new divergence needs its `why` written by hand. See \
    xtask/src/oci_expected.rs.";

pub fn record_path() -> PathBuf {
    crate::util::repo_root()
        .join("xtask")
        .join("oci-expected.json")
}

impl Record {
    pub fn load() -> Result<Record> {
        let path = record_path();
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading the OCI expectations {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// A record of `runvm`'s results, keeping the reasons of `old`; divergences from
    /// `runc` that `old` has no reason for get a placeholder the check refuses.
    pub fn from_run(
        old: &Record,
        runvm: &BTreeMap<String, Vec<Point>>,
        runc: &BTreeMap<String, Vec<Point>>,
    ) -> Record {
        let mut programs = BTreeMap::new();
        for (name, points) in runvm {
            let prev = old.programs.get(name);
            let mut e = Expected {
                why: prev.and_then(|p| p.why.clone()),
                flaky: prev.and_then(|p| p.flaky.clone()),
                ..Default::default()
            };
            for (i, p) in points.iter().enumerate() {
                let n = i + 1;
                match p {
                    Point::Pass => e.pass.0.insert(n),
                    Point::Fail | Point::Todo => e.fail.0.insert(n),
                    Point::Skip => e.skip.0.insert(n),
                };
            }
            // Points runc printed that runvm never did (runvm refused the container, or
            // stopped early) are failures of runvm's too.
            if let Some(rc) = runc.get(name) {
                e.fail.0.extend(points.len() + 1..=rc.len());
            }
            let diverges = runc
                .get(name)
                .is_some_and(|rc| e.fail.0.iter().any(|n| rc.get(n - 1) == Some(&Point::Pass)));
            if diverges && e.why.is_none() {
                e.why = Some(format!(
                    "{UNEXPLAINED}: say why runvm fails what runc passes"
                ));
            }
            programs.insert(name.clone(), e);
        }
        Record {
            about: ABOUT.to_string(),
            programs,
        }
    }

    pub fn save(&self) -> Result<()> {
        let path = record_path();
        std::fs::write(&path, serde_json::to_string_pretty(self)? + "\n")
            .with_context(|| format!("writing {}", path.display()))
    }
}

/// The placeholder `--record` writes where a reason is missing.
const UNEXPLAINED: &str = "UNEXPLAINED";

/// Checks runvm's results (and runc's, from the same run) against the record.
pub fn check(
    record: &Record,
    runvm: &BTreeMap<String, Vec<Point>>,
    runc: &BTreeMap<String, Vec<Point>>,
) -> Findings {
    let mut f = Findings::default();
    for (name, points) in runvm {
        let Some(e) = record.programs.get(name) else {
            f.failures.push(format!(
                "{name}: not in the record ({}); run `cargo xtask oci --record` and review",
                record_path().display()
            ));
            continue;
        };
        let now = |n: usize| points.get(n - 1).copied();
        let regressed: BTreeSet<usize> = e
            .pass
            .0
            .iter()
            .copied()
            .filter(|n| now(*n) != Some(Point::Pass))
            .collect();
        if !regressed.is_empty() {
            let msg = format!(
                "{name}: point(s) {} passed before and do not pass now ({})",
                Points(regressed.clone()),
                describe(&regressed, &now)
            );
            match &e.flaky {
                Some(why) => f.notes.push(format!("{msg}; flaky: {why}")),
                None => f.failures.push(msg),
            }
        }
        let rc = runc.get(name);
        let runc_passes = |n: usize| rc.and_then(|r| r.get(n - 1)) == Some(&Point::Pass);
        let printed = points.len().max(rc.map_or(0, Vec::len));
        let new_divergence: BTreeSet<usize> = (1..=printed)
            .filter(|n| now(*n) != Some(Point::Pass) && runc_passes(*n))
            .filter(|n| !e.pass.0.contains(n))
            .filter(|n| {
                !(e.fail.0.contains(n) || e.skip.0.contains(n))
                    || e.why.as_deref().is_none_or(|w| w.starts_with(UNEXPLAINED))
            })
            .collect();
        if !new_divergence.is_empty() {
            f.failures.push(format!(
                "{name}: runc passes point(s) {} and runvm does not, with no reason in the record",
                Points(new_divergence)
            ));
        }
        let improved: BTreeSet<usize> = (1..=points.len())
            .filter(|n| now(*n) == Some(Point::Pass) && !e.pass.0.contains(n))
            .collect();
        if !improved.is_empty() {
            f.notes.push(format!(
                "{name}: point(s) {} pass now and are not recorded as passing: record them \
                 (`cargo xtask oci --record`)",
                Points(improved)
            ));
        }
    }
    for name in record.programs.keys() {
        if !runvm.contains_key(name) {
            f.notes.push(format!("{name}: in the record but not run"));
        }
    }
    f
}

fn describe(points: &BTreeSet<usize>, now: &dyn Fn(usize) -> Option<Point>) -> String {
    let mut by: BTreeMap<&str, BTreeSet<usize>> = BTreeMap::new();
    for n in points {
        let what = match now(*n) {
            None => "missing",
            Some(Point::Fail) => "fail",
            Some(Point::Skip) => "skip",
            Some(Point::Todo) => "todo",
            Some(Point::Pass) => "pass",
        };
        by.entry(what).or_default().insert(*n);
    }
    by.into_iter()
        .map(|(w, p)| format!("{w}: {}", Points(p)))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use Point::*;

    fn run(v: &[(&str, &[Point])]) -> BTreeMap<String, Vec<Point>> {
        v.iter().map(|(n, p)| (n.to_string(), p.to_vec())).collect()
    }

    #[test]
    fn the_committed_record_parses_and_explains_itself() {
        let r = Record::load().unwrap();
        assert!(r.programs.len() >= 58, "{}", r.programs.len());
        for (name, e) in &r.programs {
            assert!(
                e.pass.0.is_disjoint(&e.fail.0),
                "{name}: a point both passes and fails"
            );
            if let Some(why) = &e.why {
                assert!(!why.starts_with(UNEXPLAINED), "{name}: {why}");
            }
        }
    }

    #[test]
    fn ranges_round_trip() {
        let p: Points = "1-4,7,9-10".parse().unwrap();
        assert_eq!(p.0.len(), 7);
        assert_eq!(p.to_string(), "1-4,7,9-10");
        assert!("3-1".parse::<Points>().is_err());
        assert!("0".parse::<Points>().is_err());
        assert_eq!("".parse::<Points>().unwrap().0.len(), 0);
    }

    #[test]
    fn a_point_that_passed_before_and_fails_now_fails_the_check() {
        let rc = run(&[("a", &[Fail, Fail, Fail])]);
        let before = Record::from_run(&Record::default(), &run(&[("a", &[Pass, Pass, Fail])]), &rc);
        assert!(check(&before, &run(&[("a", &[Pass, Pass, Fail])]), &rc)
            .failures
            .is_empty());
        // Runc fails it too: still a regression of runvm.
        let f = check(&before, &run(&[("a", &[Pass, Fail, Fail])]), &rc);
        assert_eq!(f.failures.len(), 1, "{f:?}");
        assert!(f.failures[0].contains("point(s) 2 passed before"), "{f:?}");
        // Fewer points printed (a crash half-way) is a regression too.
        let f = check(&before, &run(&[("a", &[Pass])]), &rc);
        assert!(f.failures[0].contains("missing: 2"), "{f:?}");
        // Unless the program is known to be flaky.
        let mut flaky = before;
        flaky.programs.get_mut("a").unwrap().flaky = Some("timing".into());
        let f = check(&flaky, &run(&[("a", &[Pass])]), &rc);
        assert!(f.failures.is_empty() && f.notes.len() == 1, "{f:?}");
    }

    #[test]
    fn a_divergence_from_runc_needs_a_reason() {
        let rc = run(&[("a", &[Pass, Pass])]);
        let vm = run(&[("a", &[Pass, Fail])]);
        let rec = Record::from_run(&Record::default(), &vm, &rc);
        assert!(rec.programs["a"]
            .why
            .as_deref()
            .unwrap()
            .starts_with(UNEXPLAINED));
        assert_eq!(check(&rec, &vm, &rc).failures.len(), 1);
        let mut rec = rec;
        rec.programs.get_mut("a").unwrap().why = Some("the VM boundary".into());
        assert!(check(&rec, &vm, &rc).failures.is_empty());
        // The reason survives a re-record.
        let again = Record::from_run(&rec, &vm, &rc);
        assert_eq!(again.programs["a"].why.as_deref(), Some("the VM boundary"));
    }

    #[test]
    fn points_runvm_never_printed_count_against_runc() {
        // runvm refused the container: no points at all where runc passed three.
        let rc = run(&[("a", &[Pass, Pass, Pass])]);
        let mut rec = Record::default();
        rec.programs.insert("a".into(), Expected::default());
        let f = check(&rec, &run(&[("a", &[])]), &rc);
        assert!(f.failures[0].contains("point(s) 1-3"), "{f:?}");
        // Recorded (with a reason), they are what is expected.
        let mut rec = Record::from_run(&Record::default(), &run(&[("a", &[])]), &rc);
        assert_eq!(rec.programs["a"].fail.to_string(), "1-3");
        rec.programs.get_mut("a").unwrap().why = Some("refused".into());
        assert!(check(&rec, &run(&[("a", &[])]), &rc).failures.is_empty());
    }

    #[test]
    fn unknown_programs_fail_and_improvements_are_noted() {
        let rc = run(&[("a", &[Pass])]);
        let rec = Record::from_run(&Record::default(), &run(&[("a", &[Fail])]), &rc);
        let f = check(&rec, &run(&[("a", &[Pass]), ("b", &[Pass])]), &rc);
        assert_eq!(f.failures.len(), 1);
        assert!(f.failures[0].starts_with("b: not in the record"));
        assert!(f
            .notes
            .iter()
            .any(|n| n.starts_with("a: point(s) 1 pass now")));
    }
}
