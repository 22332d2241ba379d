//! The demo's voice: sections, notes and step results, coloured when asked, collected for the
//! closing summary.

use std::io::{self, Write};

/// One line of the closing summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepResult {
    /// The step's name.
    pub step: &'static str,
    /// Whether it succeeded.
    pub ok: bool,
    /// What it found, in a few words.
    pub detail: String,
}

/// Writes the narration and records step results.
pub struct Narrator<'w> {
    out: &'w mut dyn Write,
    colour: bool,
    /// Results so far, in order.
    pub steps: Vec<StepResult>,
}

impl<'w> Narrator<'w> {
    /// A narrator writing to `out`.
    pub fn new(out: &'w mut dyn Write, colour: bool) -> Self {
        Self {
            out,
            colour,
            steps: Vec::new(),
        }
    }

    /// `text` in ANSI style `code` when colouring.
    pub fn paint(&self, code: &str, text: &str) -> String {
        if self.colour {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    /// A headline.
    pub fn title(&mut self, text: &str) -> io::Result<()> {
        let line = self.paint("1", text);
        writeln!(self.out, "{line}")
    }

    /// A section heading.
    pub fn section(&mut self, title: &str) -> io::Result<()> {
        let line = self.paint("1;36", &format!("== {title}"));
        writeln!(self.out, "\n{line}")
    }

    /// An indented line of narration.
    pub fn say(&mut self, text: &str) -> io::Result<()> {
        writeln!(self.out, "   {text}")
    }

    /// Records a step and prints its result; returns whether it succeeded.
    pub fn record(
        &mut self,
        step: &'static str,
        result: Result<String, String>,
    ) -> io::Result<bool> {
        let (ok, detail) = match result {
            Ok(d) => (true, d),
            Err(d) => (false, d),
        };
        let mark = if ok {
            self.paint("32", "ok  ")
        } else {
            self.paint("31", "FAIL")
        };
        writeln!(self.out, "   [{mark}] {step}: {detail}")?;
        self.steps.push(StepResult { step, ok, detail });
        Ok(ok)
    }

    /// Prints the summary table of every recorded step.
    pub fn summary(&mut self) -> io::Result<()> {
        self.section("Summary")?;
        let width = self.steps.iter().map(|s| s.step.len()).max().unwrap_or(0);
        let rows: Vec<String> = self
            .steps
            .iter()
            .map(|s| {
                let mark = if s.ok {
                    self.paint("32", "ok  ")
                } else {
                    self.paint("31", "FAIL")
                };
                format!("{mark}  {:width$}  {}", s.step, s.detail)
            })
            .collect();
        for row in rows {
            self.say(&row)?;
        }
        let passed = self.steps.iter().filter(|s| s.ok).count();
        let line = format!("{passed} of {} steps succeeded", self.steps.len());
        let line = if passed == self.steps.len() {
            self.paint("1;32", &line)
        } else {
            self.paint("1;31", &line)
        };
        writeln!(self.out, "\n   {line}")
    }
}
