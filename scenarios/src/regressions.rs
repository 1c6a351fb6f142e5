//! Regression seeds (`ci/regressions.toml`): scenario + seed pairs that once
//! found a bug, each with one line on what the bug was. `fafnir ci replay`
//! (run by ci/test) reruns them in simulation; every one must now pass.
//!
//! ```toml
//! [[seed]]
//! scenario = "scenarios/chaos.toml"
//! seed = 17
//! bug = "a restarted engine republished fills it had already published"
//! ```

use serde::Deserialize;

/// `ci/regressions.toml`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Regressions {
    #[serde(default, rename = "seed")]
    pub seeds: Vec<RegressionSeed>,
}

/// One seed that once found a bug.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegressionSeed {
    /// Path of the scenario file, relative to the repository root.
    pub scenario: String,
    pub seed: u64,
    #[serde(default)]
    pub duration_ms: Option<u64>,
    /// What the bug was, in one line.
    pub bug: String,
}

impl Regressions {
    /// Parses the file; errors name the field and the reason.
    pub fn parse(text: &str) -> Result<Regressions, String> {
        let r: Regressions = toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())?;
        for (i, s) in r.seeds.iter().enumerate() {
            if s.bug.trim().is_empty() {
                return Err(format!("seed[{i}].bug: say in one line what the bug was"));
            }
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_file_parses_and_names_real_scenarios() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let text = std::fs::read_to_string(root.join("ci/regressions.toml")).unwrap();
        let r = Regressions::parse(&text).unwrap();
        assert!(!r.seeds.is_empty());
        for s in &r.seeds {
            assert!(root.join(&s.scenario).is_file(), "{}: no such scenario", s.scenario);
        }
    }

    #[test]
    fn a_seed_without_its_story_is_refused() {
        let e = Regressions::parse("[[seed]]\nscenario = \"a\"\nseed = 1\nbug = \" \"\n").unwrap_err();
        assert!(e.contains("seed[0].bug"), "{e}");
        assert!(Regressions::parse("[[seed]]\nscenario = \"a\"\nseed = 1\n").unwrap_err().contains("bug"));
    }
}
