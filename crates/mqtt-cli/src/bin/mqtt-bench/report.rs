//! What a run prints: the human summary, the `result key=value ...` line of
//! `--machine` (which `cargo xtask bench` reads), or, with `--json`, both as one JSON
//! object. All three come from one list of figures, so they cannot disagree.

use serde_json::{Map, Number, Value};

/// One figure: a count, a measurement shown to some digits, or a word. `None` is a
/// figure that was not measured: `-` on the result line, `null` in JSON.
#[derive(Debug, Clone)]
pub(crate) enum Figure {
    /// A count.
    Count(Option<u64>),
    /// A measurement, and the digits to show after the point.
    Measure(Option<f64>, usize),
    /// A word.
    Word(String),
}

/// How to print the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Output {
    /// The summary and the faults.
    Human,
    /// The summary, the faults and the `result` line.
    Machine,
    /// One JSON object, nothing else.
    Json,
}

/// A run's report.
#[derive(Debug)]
pub(crate) struct Report {
    scenario: String,
    /// Lines for people.
    summary: Vec<String>,
    /// Figures in the order the result line shows them.
    figures: Vec<(&'static str, Figure)>,
}

impl Report {
    /// An empty report of `scenario`.
    pub(crate) fn new(scenario: &str) -> Self {
        Self {
            scenario: scenario.to_owned(),
            summary: Vec::new(),
            figures: Vec::new(),
        }
    }

    /// Adds a line to the human summary.
    pub(crate) fn line(&mut self, text: String) {
        self.summary.push(text);
    }

    /// Adds a count.
    pub(crate) fn count(&mut self, key: &'static str, v: impl Into<Option<u64>>) {
        self.figures.push((key, Figure::Count(v.into())));
    }

    /// Adds a measurement shown with `digits` after the point.
    pub(crate) fn measure(&mut self, key: &'static str, v: impl Into<Option<f64>>, digits: usize) {
        self.figures.push((key, Figure::Measure(v.into(), digits)));
    }

    /// Adds a word.
    pub(crate) fn word(&mut self, key: &'static str, v: impl Into<String>) {
        self.figures.push((key, Figure::Word(v.into())));
    }

    /// The `result` line: scenario, whether the run was clean, the figures, the number
    /// of faults.
    pub(crate) fn result_line(&self, faults: &[String]) -> String {
        let mut line = format!("result scenario={} ok={}", self.scenario, faults.is_empty());
        for (key, figure) in &self.figures {
            let value = match figure {
                Figure::Count(Some(v)) => v.to_string(),
                Figure::Measure(Some(v), digits) => format!("{v:.digits$}"),
                Figure::Word(w) => w.clone(),
                Figure::Count(None) | Figure::Measure(None, _) => "-".to_owned(),
            };
            line.push_str(&format!(" {key}={value}"));
        }
        line.push_str(&format!(" faults={}", faults.len()));
        line
    }

    /// The JSON object: what the result line holds, the faults themselves, and the
    /// summary lines.
    pub(crate) fn json(&self, faults: &[String]) -> Value {
        let mut o = Map::new();
        o.insert("scenario".into(), self.scenario.clone().into());
        o.insert("ok".into(), faults.is_empty().into());
        for (key, figure) in &self.figures {
            let value = match figure {
                Figure::Count(v) => v.map_or(Value::Null, Value::from),
                Figure::Measure(v, digits) => v
                    .map(|v| round(v, *digits))
                    .and_then(Number::from_f64)
                    .map_or(Value::Null, Value::Number),
                Figure::Word(w) => w.clone().into(),
            };
            o.insert((*key).into(), value);
        }
        o.insert(
            "faults".into(),
            faults.iter().cloned().map(Value::from).collect(),
        );
        o.insert(
            "summary".into(),
            self.summary.iter().cloned().map(Value::from).collect(),
        );
        Value::Object(o)
    }

    /// Prints the report; true if the run was clean.
    pub(crate) fn print(&self, faults: &[String], output: Output) -> bool {
        if output == Output::Json {
            println!("{}", self.json(faults));
        } else {
            for line in &self.summary {
                println!("{line}");
            }
            for f in faults {
                println!("  FAULT: {f}");
            }
            if output == Output::Machine {
                println!("{}", self.result_line(faults));
            }
        }
        faults.is_empty()
    }
}

/// `v` rounded to `digits` after the point, as the result line shows it.
fn round(v: f64, digits: usize) -> f64 {
    let scale = 10f64.powi(i32::try_from(digits).unwrap_or(0));
    (v * scale).round() / scale
}

/// The JSON printed for a run that could not be made (bad flags, a refused
/// connection): what went wrong, so a script reading stdout always gets an object.
pub(crate) fn json_error(scenario: &str, error: &str) -> Value {
    let mut o = Map::new();
    o.insert("scenario".into(), scenario.into());
    o.insert("ok".into(), false.into());
    o.insert("error".into(), error.into());
    Value::Object(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        let mut r = Report::new("fan-in");
        r.line("fan-in: 2/2 delivered".to_owned());
        r.count("qos", 1);
        r.count("peak_rss", None);
        r.measure("seconds", 1.23456, 4);
        r.measure("cpu_s", None, 3);
        r.word("transport", "tcp");
        r
    }

    #[test]
    fn result_line_and_json_hold_the_same_figures() {
        let r = sample();
        let faults = vec!["lost one".to_owned()];
        assert_eq!(
            r.result_line(&faults),
            "result scenario=fan-in ok=false qos=1 peak_rss=- seconds=1.2346 cpu_s=- \
             transport=tcp faults=1"
        );
        let j = r.json(&faults);
        assert_eq!(j["scenario"], "fan-in");
        assert_eq!(j["ok"], false);
        assert_eq!(j["qos"], 1);
        assert_eq!(j["peak_rss"], Value::Null);
        assert_eq!(j["seconds"], 1.2346);
        assert_eq!(j["cpu_s"], Value::Null);
        assert_eq!(j["transport"], "tcp");
        assert_eq!(j["faults"][0], "lost one");
        assert_eq!(j["summary"][0], "fan-in: 2/2 delivered");
    }
}
