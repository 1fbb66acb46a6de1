//! What a benchmark run found: figures with their units and, where the project has one, the
//! target each is held against; printed as a table for people or JSON for tools.

use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use serde::Serialize;

/// The goal a figure is held against.
#[derive(Serialize, Clone, Copy, Debug)]
#[serde(rename_all = "snake_case")]
pub enum Goal {
    /// At least this much.
    AtLeast(f64),
    /// At most this much.
    AtMost(f64),
}

impl Goal {
    fn met(self, value: f64) -> bool {
        match self {
            Goal::AtLeast(t) => value >= t,
            Goal::AtMost(t) => value <= t,
        }
    }
}

/// One measured figure.
#[derive(Serialize, Clone, Debug)]
pub struct Figure {
    /// The scenario that measured it.
    pub scenario: &'static str,
    /// What it is ("calls/s, 64 clients").
    pub name: String,
    /// Its value, in `unit`.
    pub value: f64,
    /// Its unit.
    pub unit: &'static str,
    /// The project's target for it, if it has one.
    pub goal: Option<Goal>,
    /// Whether the target is met (absent without a target).
    pub met: Option<bool>,
    /// The disk's raw fdatasync rate measured in the same run.
    pub fdatasync_per_sec: f64,
}

/// The figures of a run.
#[derive(Serialize, Default)]
pub struct Report {
    /// `fdatasync` calls per second on the benchmark's disk, measured at the start of the run.
    pub fdatasync_per_sec: f64,
    /// Each figure.
    pub figures: Vec<Figure>,
}

impl Report {
    /// Adds a figure, with `goal` if the project has one for it.
    pub fn add(
        &mut self,
        scenario: &'static str,
        name: impl Into<String>,
        value: f64,
        unit: &'static str,
        goal: Option<Goal>,
    ) {
        self.figures.push(Figure {
            scenario,
            name: name.into(),
            value,
            unit,
            goal,
            met: goal.map(|g| g.met(value)),
            fdatasync_per_sec: self.fdatasync_per_sec,
        });
    }

    /// Prints the report, as JSON or as a table.
    pub fn print(&self, json: bool) {
        if json {
            println!("{}", serde_json::to_string_pretty(self).unwrap_or_default());
            return;
        }
        let mut table = Table::new();
        table
            .load_preset(UTF8_BORDERS_ONLY)
            .set_header(["SCENARIO", "FIGURE", "VALUE", "TARGET", "MET"]);
        for f in &self.figures {
            table.add_row([
                f.scenario.to_owned(),
                f.name.clone(),
                format!("{} {}", number(f.value), f.unit),
                match f.goal {
                    Some(Goal::AtLeast(t)) => format!("≥ {} {}", number(t), f.unit),
                    Some(Goal::AtMost(t)) => format!("≤ {} {}", number(t), f.unit),
                    None => String::new(),
                },
                match f.met {
                    Some(true) => "yes".to_owned(),
                    Some(false) => "MISSED".to_owned(),
                    None => String::new(),
                },
            ]);
        }
        println!("{table}");
        println!(
            "raw fdatasync on this disk, same run: {} per second",
            number(self.fdatasync_per_sec)
        );
    }
}

/// A figure readably: no decimals from 100 up, three significant digits below.
fn number(v: f64) -> String {
    match v.abs() {
        a if a >= 100.0 || a == 0.0 => format!("{v:.0}"),
        a if a >= 10.0 => format!("{v:.1}"),
        a if a >= 1.0 => format!("{v:.2}"),
        _ => format!("{v:.3}"),
    }
}
