//! The bridge's configuration: a small TOML file, and flags that add to it.
//!
//! ```toml
//! # Zenoh: explicit endpoints, no multicast scouting unless asked.
//! listen = ["tcp/10.0.0.1:7447"]
//! connect = ["tcp/10.0.0.2:7447"]
//! scouting = false
//! key_prefix = "shmbus"
//!
//! # Local topics to carry out (names or globs: `*` any run of characters, `?` one).
//! [[export]]
//! topics = "camera.*"
//! max_rate_hz = 30.0       # at most 30 messages a second per topic (overwrite topics skip)
//!
//! [[export]]
//! topics = "robot.pose"
//!
//! # Remote topics to bring in.
//! [[import]]
//! topics = "cmd.*"
//! ```

use std::path::Path;

use serde::Deserialize;

/// Topics one way, with an optional rate limit.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// A topic name, or a glob (`*` matches any run of characters, `?` one character).
    pub topics: String,
    /// Most messages a second forwarded per topic (exports only). Messages of an overwrite topic
    /// beyond the rate are skipped (the newest is sent when the rate allows); a back-pressure
    /// topic is read no faster.
    #[serde(default)]
    pub max_rate_hz: Option<f64>,
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Zenoh endpoints to listen on (e.g. `tcp/10.0.0.1:7447`).
    #[serde(default)]
    pub listen: Vec<String>,
    /// Zenoh endpoints to connect to.
    #[serde(default)]
    pub connect: Vec<String>,
    /// Multicast scouting (off by default: endpoints are explicit).
    #[serde(default)]
    pub scouting: bool,
    /// The first chunk of every key expression (`<prefix>/<topic>`).
    #[serde(default = "default_prefix")]
    pub key_prefix: String,
    /// Local topics carried out.
    #[serde(default)]
    pub export: Vec<Rule>,
    /// Remote topics brought in.
    #[serde(default)]
    pub import: Vec<Rule>,
}

fn default_prefix() -> String {
    "shmbus".to_owned()
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: Vec::new(),
            connect: Vec::new(),
            scouting: false,
            key_prefix: default_prefix(),
            export: Vec::new(),
            import: Vec::new(),
        }
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// It is not valid TOML for this schema.
    #[error("{path}: {source}")]
    Parse {
        /// The file.
        path: String,
        /// Why.
        source: Box<toml::de::Error>,
    },
    /// A value no bridge can use.
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// Reads a TOML file.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Read`], [`ConfigError::Parse`], or [`ConfigError::Invalid`] from
    /// [`validate`](Self::validate).
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let c: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.display().to_string(),
            source: Box::new(source),
        })?;
        c.validate()?;
        Ok(c)
    }

    /// Checks what TOML cannot: a usable prefix, positive rates, something to do.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`], naming the value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let p = &self.key_prefix;
        if p.is_empty()
            || p.contains(['*', '$', '?', '#'])
            || p.starts_with('/')
            || p.ends_with('/')
        {
            return Err(ConfigError::Invalid(format!(
                "key_prefix {p:?}: a key expression without wildcards and without a leading or trailing '/'"
            )));
        }
        for r in self.export.iter().chain(&self.import) {
            if r.topics.is_empty() {
                return Err(ConfigError::Invalid("an empty topics pattern".into()));
            }
            if let Some(hz) = r.max_rate_hz {
                if !(hz.is_finite() && hz > 0.0) {
                    return Err(ConfigError::Invalid(format!(
                        "max_rate_hz {hz} for {:?}: a positive number of messages a second",
                        r.topics
                    )));
                }
            }
        }
        if self.export.is_empty() && self.import.is_empty() {
            return Err(ConfigError::Invalid(
                "nothing to bridge: give at least one export or import".into(),
            ));
        }
        Ok(())
    }

    /// The first export rule that matches `topic`.
    pub fn export_rule(&self, topic: &str) -> Option<&Rule> {
        self.export.iter().find(|r| glob(&r.topics, topic))
    }

    /// Whether `topic` is imported.
    pub fn imports(&self, topic: &str) -> bool {
        self.import.iter().any(|r| glob(&r.topics, topic))
    }
}

/// Whether `name` matches `pattern`: `*` any run of characters (none too), `?` one character,
/// everything else itself.
///
/// # Examples
///
/// ```
/// use shmbus_zenoh::config::glob;
/// assert!(glob("camera.*", "camera.front"));
/// assert!(glob("robot.pose", "robot.pose"));
/// assert!(!glob("camera.?", "camera.front"));
/// ```
pub fn glob(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Iterative matching with one backtrack point (the last `*`).
    let (mut i, mut j) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some((i, j));
            i += 1;
        } else if let Some((si, sj)) = star {
            i = si + 1;
            j = sj + 1;
            star = Some((si, sj + 1));
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("*", ""));
        assert!(glob("*", "anything"));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(!glob("a*b*c", "axxbyy"));
        assert!(glob("cam?ra.*", "camera.left"));
        assert!(!glob("camera", "camera.left"));
        assert!(glob("*.pose", "robot.pose"));
    }

    #[test]
    fn a_file_reads_and_bad_values_are_refused() {
        let c: Config = toml::from_str(
            r#"
            listen = ["tcp/10.0.0.1:7447"]
            [[export]]
            topics = "camera.*"
            max_rate_hz = 30.0
            [[import]]
            topics = "cmd"
            "#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.key_prefix, "shmbus");
        assert!(!c.scouting);
        assert_eq!(
            c.export_rule("camera.front").unwrap().max_rate_hz,
            Some(30.0)
        );
        assert!(c.imports("cmd") && !c.imports("cmd.x"));
        assert!(
            toml::from_str::<Config>("listn = []").is_err(),
            "unknown keys"
        );
        let mut bad = c.clone();
        bad.export[0].max_rate_hz = Some(0.0);
        assert!(bad.validate().is_err());
        let mut bad = c.clone();
        bad.key_prefix = "a/*".into();
        assert!(bad.validate().is_err());
        assert!(Config::default().validate().is_err(), "nothing to do");
    }
}
