//! `memtrain plan --measure`'s report ([`memtrain::plan::measure_plan`]).

use crate::output::{mib, mib_usize};

/// `memtrain plan --measure`'s report: each measured policy's peaks and step time against the
/// prediction, then the plan's time as a ratio of its keep-everything reference, measured and
/// predicted (the error machine drift between planning and measuring does not reach).
pub fn print_plan_measurement(
    report: &memtrain::plan::PlanReport,
    m: &memtrain::plan::PlanMeasurement,
    steps: usize,
) {
    let order = match m.uniform {
        None => {
            "plan, keep-everything, keep-everything, plan (the plan is the best uniform policy)"
        }
        Some(_) => "plan, keep-everything, uniform, uniform, keep-everything, plan",
    };
    println!(
        "measured over {steps} steps in each of two runs per policy, in the order {order} (medians; peaks the largest):"
    );
    let mut rows = vec![("plan", &report.plan, m.plan)];
    if let Some(u) = m.uniform {
        rows.push(("best uniform", &report.uniform, u));
    }
    for (name, plan, measured) in rows {
        println!(
            "  {name}: peak {:.1} MiB (predicted {:.1}, {:+.1}%; activations alone {:.1}), step peak {:.1} MiB, {:.3} s a step (predicted {:.3}, {:+.1}%)",
            mib(measured.chain_bytes),
            mib_usize(plan.peak),
            100.0 * (measured.chain_bytes as f64 / plan.peak as f64 - 1.0),
            mib(measured.activation_bytes),
            mib(measured.peak_bytes),
            measured.step_seconds,
            plan.time,
            100.0 * (measured.step_seconds / plan.time - 1.0)
        );
    }
    let keep_all = memtrain::plan::predicted_keep_all(report);
    let predicted = report.plan.time / keep_all;
    println!(
        "  keep-everything (the plan's policy, no recomputation): peak {:.1} MiB, {:.3} s a step (predicted {:.3}, {:+.1}%); plan/keep-everything {:.3}x (predicted {:.3}x, {:+.1}%)",
        mib(m.keep_all.chain_bytes),
        m.keep_all.step_seconds,
        keep_all,
        100.0 * (m.keep_all.step_seconds / keep_all - 1.0),
        m.ratio(),
        predicted,
        100.0 * (m.ratio() / predicted - 1.0)
    );
}
