//! Reading one population's parameters from its TOML table, refusing unknown
//! keys and bad values with the key and the reason.

use std::collections::BTreeSet;

/// Reads the keys of one kind; every read key must be one of `keys`, and a
/// table key outside `keys` is refused before any value is looked at.
pub(crate) struct Reader<'a> {
    table: &'a toml::Table,
    keys: &'static [&'static str],
    read: BTreeSet<&'static str>,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(kind: &str, table: &'a toml::Table, keys: &'static [&'static str]) -> Result<Reader<'a>, String> {
        if let Some(unknown) = table.keys().find(|k| !keys.contains(&k.as_str())) {
            return Err(format!("{unknown}: unknown key for a {kind} population (known: {})", keys.join(", ")));
        }
        Ok(Reader { table, keys, read: BTreeSet::new() })
    }

    fn get(&mut self, key: &'static str) -> Option<&'a toml::Value> {
        assert!(self.keys.contains(&key), "parameter {key} missing from its kind's key list");
        self.read.insert(key);
        self.table.get(key)
    }

    /// A rate in events per second: a TOML integer or float, finite, in
    /// (0, 100000], or also exactly 0 when `zero_ok`.
    pub(crate) fn rate(&mut self, key: &'static str, default: f64, zero_ok: bool) -> Result<f64, String> {
        let v = match self.get(key) {
            None => return Ok(default),
            Some(toml::Value::Integer(i)) => *i as f64,
            Some(toml::Value::Float(f)) => *f,
            Some(other) => return Err(format!("{key}: must be a number, not {}", other.type_str())),
        };
        if !v.is_finite() {
            return Err(format!("{key}: must be a finite number"));
        }
        if v < 0.0 || (v == 0.0 && !zero_ok) {
            let what = if zero_ok { "must not be negative" } else { "must be positive" };
            return Err(format!("{key}: {what} (got {v})"));
        }
        if v > 100_000.0 {
            return Err(format!("{key}: must be at most 100000 (got {v})"));
        }
        Ok(v)
    }

    /// An integer in `min..=max`.
    pub(crate) fn int(&mut self, key: &'static str, default: i64, min: i64, max: i64) -> Result<i64, String> {
        assert!((min..=max).contains(&default), "default of {key} outside its own range");
        let v = match self.get(key) {
            None => return Ok(default),
            Some(toml::Value::Integer(i)) => *i,
            Some(other) => return Err(format!("{key}: must be an integer, not {}", other.type_str())),
        };
        check_range(key, v, min, max)?;
        Ok(v)
    }

    /// A percentage, 0 to 100.
    pub(crate) fn percent(&mut self, key: &'static str, default: u32) -> Result<u32, String> {
        Ok(self.int(key, i64::from(default), 0, 100)? as u32)
    }

    /// Basis points in `min..=max`.
    pub(crate) fn bps(&mut self, key: &'static str, default: u32, min: u32, max: u32) -> Result<u32, String> {
        Ok(self.int(key, i64::from(default), i64::from(min), i64::from(max))? as u32)
    }

    /// A duration in ms in `min..=max`.
    pub(crate) fn ms(&mut self, key: &'static str, default: u64, min: u64, max: u64) -> Result<u64, String> {
        let (d, lo, hi) = (default as i64, min as i64, max as i64);
        Ok(self.int(key, d, lo, hi)? as u64)
    }

    /// A list of times in ms since the run started, returned sorted and without repeats.
    pub(crate) fn ms_list(&mut self, key: &'static str, max: u64) -> Result<Vec<u64>, String> {
        let items = match self.get(key) {
            None => return Ok(Vec::new()),
            Some(toml::Value::Array(items)) => items,
            Some(other) => return Err(format!("{key}: must be a list of integers (ms), not {}", other.type_str())),
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let toml::Value::Integer(v) = item else {
                return Err(format!("{key}[{i}]: must be an integer (ms), not {}", item.type_str()));
            };
            check_range(&format!("{key}[{i}]"), *v, 0, max as i64)?;
            out.push(*v as u64);
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// One of `options` (a string).
    pub(crate) fn choice(
        &mut self,
        key: &'static str,
        default: &'static str,
        options: &[&'static str],
    ) -> Result<&'static str, String> {
        assert!(options.contains(&default), "default of {key} not among its options");
        match self.get(key) {
            None => Ok(default),
            Some(toml::Value::String(s)) => options
                .iter()
                .find(|o| **o == s.as_str())
                .copied()
                .ok_or_else(|| format!("{key}: {s:?} is not one of {}", options.join(", "))),
            Some(other) => Err(format!("{key}: must be a string, not {}", other.type_str())),
        }
    }

    /// An optional string.
    pub(crate) fn opt_string(&mut self, key: &'static str) -> Result<Option<String>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
            Some(toml::Value::String(_)) => Err(format!("{key}: must not be empty")),
            Some(other) => Err(format!("{key}: must be a string, not {}", other.type_str())),
        }
    }

    /// Checks that the parser read every key it documents (a kind whose key list
    /// and parser drift apart is a bug).
    pub(crate) fn finish(self) {
        let unread: Vec<_> = self.keys.iter().filter(|k| !self.read.contains(*k)).collect();
        assert!(unread.is_empty(), "keys listed but never read: {unread:?}");
    }
}

fn check_range(key: &str, v: i64, min: i64, max: i64) -> Result<(), String> {
    if v < min {
        let why = match min {
            0 => "must not be negative".to_string(),
            1 => "must be positive".to_string(),
            _ => format!("must be at least {min}"),
        };
        return Err(format!("{key}: {why} (got {v})"));
    }
    if v > max {
        return Err(format!("{key}: must be at most {max} (got {v})"));
    }
    Ok(())
}

/// Refuses `lo > hi` for two keys read as a range.
pub(crate) fn ordered(lo_key: &str, lo: i64, hi_key: &str, hi: i64) -> Result<(), String> {
    if lo > hi {
        return Err(format!("{lo_key}: must be at most {hi_key} ({hi}) (got {lo})"));
    }
    Ok(())
}
