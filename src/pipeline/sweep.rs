//! Sweeps: a pipeline file whose `[sweep]` table declares a matrix of settings, e.g.
//!
//! ```toml
//! [sweep]
//! "pipeline.seed" = [0, 1, 2]
//! cases = [
//!   { name = "baseline", "pipeline.method" = "baseline" },
//!   { name = "icn",      "pipeline.method" = "icn" },
//! ]
//! ```
//!
//! expands into one pipeline per combination (every `cases` entry times the product of
//! the listed keys). Members are ordinary pipelines: they share every common stage
//! through the store, because keys depend only on what a stage computes.

use crate::pipeline::spec::{self, Pipeline};
use crate::UserError;
use anyhow::Result;
use std::path::Path;

/// One pipeline of a sweep.
pub struct Member {
    /// The case name, if the sweep has cases.
    pub case: Option<String>,
    /// (key, value) of every swept setting, in the sweep's order.
    pub values: Vec<(String, String)>,
    pub pipeline: Pipeline,
}

impl Member {
    pub fn label(&self) -> String {
        label_of(&self.case, &self.values)
    }
}

/// A case of a sweep: its name and the settings it stands for.
type Case = (Option<String>, Vec<(String, toml::Value)>);

/// The members of a pipeline file: one without a `[sweep]` table, the matrix with one.
pub fn expand(file: &Path, overrides: &[String]) -> Result<Vec<Member>> {
    let base = spec::load(file, overrides)?;
    let Some(sweep) = base.spec.sweep.clone() else {
        return Ok(vec![Member { case: None, values: Vec::new(), pipeline: base }]);
    };
    let shown = file.display();
    let mut cases: Vec<Case> = vec![(None, Vec::new())];
    let mut axes: Vec<(String, Vec<toml::Value>)> = Vec::new();
    for (key, value) in sweep {
        match (key.as_str(), value) {
            ("cases", toml::Value::Array(list)) => {
                cases = list
                    .into_iter()
                    .enumerate()
                    .map(|(i, c)| {
                        let toml::Value::Table(mut t) = c else {
                            return Err(UserError(format!("{shown}: sweep.cases[{i}]: expected a table of settings with a name")));
                        };
                        let name = match t.remove("name") {
                            Some(toml::Value::String(n)) => n,
                            _ => return Err(UserError(format!("{shown}: sweep.cases[{i}]: expected name = \"...\""))),
                        };
                        Ok((Some(name), t.into_iter().collect()))
                    })
                    .collect::<std::result::Result<_, _>>()?;
            }
            (_, toml::Value::Array(values)) if !values.is_empty() => axes.push((key, values)),
            _ => return Err(UserError(format!("{shown}: sweep.{key}: expected a non-empty list of values (or `cases`, a list of tables)")).into()),
        }
    }
    // a --set of a swept key would be overridden by every member: refuse it, never ignore it
    for o in overrides {
        let key = o.split_once('=').map_or(o.as_str(), |(k, _)| k).trim();
        let swept_by_axis = axes.iter().any(|(k, _)| k == key);
        let swept_by_case = cases.iter().any(|(_, settings)| settings.iter().any(|(k, _)| k == key));
        if swept_by_axis || swept_by_case {
            let by = if swept_by_axis { format!("sweep.\"{key}\"") } else { "sweep.cases".to_string() };
            return Err(UserError(format!("{shown}: --set {o}: `{key}` is swept by {by}, which sets it for every member; change the [sweep] table instead (or run a copy of the file without it)")).into());
        }
    }
    let mut members = Vec::new();
    for (case, settings) in &cases {
        for combo in product(&axes) {
            let mut sets = overrides.to_vec();
            sets.extend(settings.iter().chain(&combo).map(|(k, v)| format!("{k}={v}")));
            // the case name stands for its settings; the axes are listed
            let values: Vec<(String, String)> = combo.iter().map(|(k, v)| (k.clone(), display(v))).collect();
            let pipeline = spec::load(file, &sets).map_err(|e| UserError(format!("sweep member {}: {e:#}", label_of(case, &values))))?;
            members.push(Member { case: case.clone(), values, pipeline });
        }
    }
    Ok(members)
}

fn label_of(case: &Option<String>, values: &[(String, String)]) -> String {
    let mut parts: Vec<String> = case.iter().cloned().collect();
    parts.extend(values.iter().map(|(k, v)| format!("{k}={v}")));
    parts.join(" ")
}

/// A value as a person reads it (strings without quotes).
fn display(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Every combination of one value per axis, in order.
fn product(axes: &[(String, Vec<toml::Value>)]) -> Vec<Vec<(String, toml::Value)>> {
    axes.iter().fold(vec![Vec::new()], |acc, (key, values)| {
        acc.into_iter()
            .flat_map(|prefix| {
                values.iter().map(move |v| {
                    let mut p = prefix.clone();
                    p.push((key.clone(), v.clone()));
                    p
                })
            })
            .collect()
    })
}

/// Mean and sample standard deviation.
pub fn mean_sd(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n.max(1.0);
    let var = if xs.len() > 1 { xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (mean, var.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn product_and_statistics() {
        let axes = vec![("a".to_string(), vec![toml::Value::Integer(1), toml::Value::Integer(2)]), ("b".to_string(), vec![toml::Value::from("x"), toml::Value::from("y"), toml::Value::from("z")])];
        let p = product(&axes);
        assert_eq!(p.len(), 6);
        assert_eq!(display(&p[5][1].1), "z");
        assert_eq!(p[3][0].1, toml::Value::Integer(2));
        let (m, s) = mean_sd(&[1.0, 2.0, 3.0]);
        assert!((m - 2.0).abs() < 1e-12 && (s - 1.0).abs() < 1e-12);
    }
}
