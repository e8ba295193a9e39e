//! Learning-rate schedules: linear warmup, then cosine (or linear) decay to a floor, or constant.
//!
//! The step numbering follows transformers' `get_*_schedule_with_warmup` (which TRL and open-r1
//! use): optimizer step `k` (0-based) uses `peak * factor(k)`, so with warmup the very first
//! update uses a learning rate of 0 and step `warmup` reaches the peak.

use serde::{Deserialize, Serialize};

/// The decay after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScheduleKind {
    /// Half a cosine from the peak down to `peak * min_lr_ratio` (transformers' `cosine_with_min_lr`).
    Cosine,
    /// A straight line from the peak down to `peak * min_lr_ratio`.
    Linear,
    /// The peak after warmup, until the end.
    Constant,
}

/// A resolved schedule: everything needed to give the learning rate of any step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    pub kind: ScheduleKind,
    pub peak_lr: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
    pub min_lr_ratio: f64,
}

impl Schedule {
    /// The multiplier of the peak learning rate at optimizer step `step` (0-based).
    pub fn factor(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return step as f64 / self.warmup_steps.max(1) as f64;
        }
        let decay_steps = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let progress = ((step - self.warmup_steps) as f64 / decay_steps as f64).min(1.0);
        let min = self.min_lr_ratio;
        match self.kind {
            ScheduleKind::Constant => 1.0,
            ScheduleKind::Cosine => min + (1.0 - min) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
            ScheduleKind::Linear => min + (1.0 - min) * (1.0 - progress),
        }
    }

    /// The learning rate of optimizer step `step` (0-based).
    pub fn lr(&self, step: u64) -> f64 {
        self.peak_lr * self.factor(step)
    }
}

/// Warmup steps from a ratio of the total, rounded up as transformers' `get_warmup_steps` does.
pub fn warmup_steps(total_steps: u64, warmup_ratio: f64) -> u64 {
    (total_steps as f64 * warmup_ratio).ceil() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::PI;

    fn sched(kind: ScheduleKind) -> Schedule {
        Schedule { kind, peak_lr: 2e-4, warmup_steps: 10, total_steps: 110, min_lr_ratio: 0.1 }
    }

    #[test]
    fn values_at_chosen_steps_equal_the_formulas() {
        let cos = |p: f64| 2e-4 * (0.1 + 0.9 * 0.5 * (1.0 + (PI * p).cos()));
        let lin = |p: f64| 2e-4 * (0.1 + 0.9 * (1.0 - p));
        let table: &[(ScheduleKind, u64, f64)] = &[
            (ScheduleKind::Cosine, 0, 0.0),
            (ScheduleKind::Cosine, 1, 2e-5),
            (ScheduleKind::Cosine, 5, 1e-4),
            (ScheduleKind::Cosine, 10, 2e-4),
            (ScheduleKind::Cosine, 35, cos(0.25)),
            (ScheduleKind::Cosine, 60, cos(0.5)),
            (ScheduleKind::Cosine, 60, 2e-4 * 0.55),
            (ScheduleKind::Cosine, 97, cos(0.87)),
            (ScheduleKind::Cosine, 110, 2e-5),
            (ScheduleKind::Cosine, 500, 2e-5),
            (ScheduleKind::Linear, 3, 6e-5),
            (ScheduleKind::Linear, 10, 2e-4),
            (ScheduleKind::Linear, 60, lin(0.5)),
            (ScheduleKind::Linear, 110, 2e-5),
            (ScheduleKind::Constant, 4, 8e-5),
            (ScheduleKind::Constant, 10, 2e-4),
            (ScheduleKind::Constant, 109, 2e-4),
        ];
        for &(kind, step, want) in table {
            let got = sched(kind).lr(step);
            assert!((got - want).abs() < 1e-15, "{kind:?} step {step}: {got} != {want}");
        }
    }

    #[test]
    fn no_warmup_starts_at_the_peak() {
        let s = Schedule { warmup_steps: 0, ..sched(ScheduleKind::Cosine) };
        assert_eq!(s.lr(0), 2e-4);
        assert!(s.lr(1) < 2e-4);
    }

    #[test]
    fn warmup_ratio_rounds_up() {
        assert_eq!(warmup_steps(100, 0.03), 3);
        assert_eq!(warmup_steps(50, 0.03), 2);
        assert_eq!(warmup_steps(50, 0.0), 0);
    }
}
