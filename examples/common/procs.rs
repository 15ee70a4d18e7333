//! What the multi-process examples share: starting this program again in a role, and running
//! as a test (`cargo test -p shmbus-examples`), where the children are this test binary running
//! its `tests::child` test in the role given by an environment variable.

use std::process::{Child, Command};

/// Carries a child's role when the example runs as a test.
#[cfg(test)]
pub(crate) const ROLE_ENV: &str = "SHMBUS_EXAMPLE_ROLE";

/// Starts this program again with `args` as its role.
pub(crate) fn spawn(args: &[&str]) -> std::io::Result<Child> {
    let mut c = Command::new(std::env::current_exe()?);
    #[cfg(test)]
    c.args(["--exact", "tests::child", "--nocapture", "--quiet"])
        .env(ROLE_ENV, args.join("\u{1f}"));
    #[cfg(not(test))]
    c.args(args);
    c.spawn()
}

/// The role of a child started by [`spawn`] in test mode.
#[cfg(test)]
pub(crate) fn role_from_env() -> Option<Vec<String>> {
    std::env::var(ROLE_ENV)
        .ok()
        .map(|s| s.split('\u{1f}').map(String::from).collect())
}

/// Waits for every child; an error names the first that failed.
pub(crate) fn wait_all(children: Vec<Child>) -> Result<(), String> {
    for mut c in children {
        let status = c.wait().map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!("a child process failed: {status}"));
        }
    }
    Ok(())
}

/// A name unique to this run of the example.
pub(crate) fn unique(what: &str) -> String {
    format!("example-{what}-{}", std::process::id())
}

/// The tests every example has: the example runs, and children run their role.
#[macro_export]
macro_rules! example_tests {
    () => {
        #[cfg(test)]
        mod tests {
            #[test]
            fn child() {
                if let Some(a) = super::procs::role_from_env() {
                    let a: Vec<&str> = a.iter().map(String::as_str).collect();
                    super::run(&a).unwrap();
                }
            }

            #[test]
            fn example_runs() {
                if super::procs::role_from_env().is_none() {
                    super::run(&[]).unwrap();
                }
            }
        }
    };
}
