//! Names as users type them, and suggestions for names that do not exist.

use shmbus_core::name::Name;
use shmbus_core::segment;
use shmbus_core::wire::{FILE_PREFIX, SHM_DIR};

use crate::error::CliError;

/// Most suggestions shown.
const MAX_SUGGESTIONS: usize = 3;

/// The shmbus name a user typed. Besides `demo.frames`, the file path
/// `/dev/shm/shmbus.demo.frames` is accepted.
pub(crate) fn parse(typed: &str) -> Result<Name, CliError> {
    let bare = typed
        .strip_prefix(SHM_DIR)
        .and_then(|rest| rest.strip_prefix('/'))
        .and_then(|file| file.strip_prefix(FILE_PREFIX))
        .unwrap_or(typed);
    Name::new(bare).map_err(|source| CliError::BadName {
        name: typed.to_owned(),
        source,
    })
}

/// The name a user typed, which must exist; otherwise [`CliError::NotFound`] with suggestions.
pub(crate) fn existing(typed: &str) -> Result<Name, CliError> {
    let name = parse(typed)?;
    if segment::exists(&name) {
        return Ok(name);
    }
    Err(not_found(name.as_str()))
}

/// [`CliError::NotFound`] for `wanted`, with suggestions from the objects that exist now.
pub(crate) fn not_found(wanted: &str) -> CliError {
    let names: Vec<String> = segment::list()
        .unwrap_or_default()
        .into_iter()
        .map(|n| n.as_str().to_owned())
        .collect();
    CliError::NotFound {
        name: wanted.to_owned(),
        suggestions: suggest(wanted, &names),
    }
}

/// The names among `names` that `wanted` was probably meant to be, best first: those within a
/// small edit distance (typos, swapped letters), then those that contain it as a dotted part
/// (`frames` for `demo.frames`).
pub(crate) fn suggest(wanted: &str, names: &[String]) -> Vec<String> {
    let limit = (wanted.chars().count() / 3).clamp(1, 4);
    let mut scored: Vec<(u8, usize, &String)> = names
        .iter()
        .filter_map(|name| {
            let d = strsim::damerau_levenshtein(&wanted.to_lowercase(), &name.to_lowercase());
            if d <= limit {
                return Some((0, d, name));
            }
            let part = name.split('.').any(|p| {
                p.eq_ignore_ascii_case(wanted) || strsim::damerau_levenshtein(p, wanted) <= 1
            }) || (wanted.len() >= 3 && name.contains(wanted));
            part.then_some((1, d, name))
        })
        .collect();
    scored.sort();
    scored
        .into_iter()
        .take(MAX_SUGGESTIONS)
        .map(|(_, _, n)| n.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn typos_first_then_parts() {
        let all = names(&[
            "demo.frames",
            "demo.frame",
            "demo.ready",
            "robot.pose",
            "robot.status",
            "other",
        ]);
        assert_eq!(suggest("demo.frmaes", &all), ["demo.frames", "demo.frame"]);
        assert_eq!(suggest("robot.pse", &all), ["robot.pose"]);
        assert_eq!(suggest("status", &all), ["robot.status"]);
        assert_eq!(suggest("pose", &all), ["robot.pose"]);
        assert_eq!(
            suggest("demo", &all),
            ["demo.frame", "demo.ready", "demo.frames"]
        );
        assert!(suggest("zzzzzz", &all).is_empty());
        assert!(suggest("x", &names(&[])).is_empty());
    }

    #[test]
    fn not_found_message() {
        let e = CliError::NotFound {
            name: "demo.frmaes".into(),
            suggestions: names(&["demo.frames", "demo.frame"]),
        };
        assert_eq!(
            e.to_string(),
            "no shmbus object named `demo.frmaes`; did you mean `demo.frames`, `demo.frame`?"
        );
        let e = CliError::NotFound {
            name: "x".into(),
            suggestions: vec![],
        };
        assert_eq!(e.to_string(), "no shmbus object named `x`");
    }

    #[test]
    fn file_paths_are_names_too() {
        assert_eq!(parse("/dev/shm/shmbus.a.b").unwrap().as_str(), "a.b");
        assert_eq!(parse("a.b").unwrap().as_str(), "a.b");
        assert!(matches!(parse("a/b"), Err(CliError::BadName { .. })));
    }
}
