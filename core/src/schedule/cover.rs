//! The fractional cover bound: the cheapest hourly cost of machine capacity that covers a total
//! demand of cpu and memory if machines could be bought in fractions (the LP relaxation of
//! "buy machines to hold this work", with the work itself also divisible).
//!
//! It is a lower bound on any real packing and its dual prices (what a milli-cpu and a byte
//! are worth at the margin) tell the planner how much of a machine's price each task should
//! carry. Two constraints mean an optimal basis has at most two machine types, so trying every
//! single type and every pair solves it exactly, without an LP solver. Floats are fine here:
//! this estimates, it never bills.

use crate::resources::Resources;

const GIB: f64 = (1u64 << 30) as f64;

/// The bound in micro-dollars per hour, and the marginal price of each resource.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CoverBound {
    pub cost: f64,
    /// Micro-dollars per hour for one milli-cpu.
    pub per_milli_cpu: f64,
    /// Micro-dollars per hour for one byte.
    pub per_byte: f64,
}

/// Cheapest fractional cover of `demand` by `options` (capacity, price per hour). `None`
/// when nothing can cover it (no options, or every option lacks a demanded resource).
pub fn cover_bound(options: &[(Resources, u64)], demand: Resources) -> Option<CoverBound> {
    // Cores and GiB keep the numbers near 1, where floats are most exact.
    let (dc, dm) = (demand.milli_cpu as f64 / 1000.0, demand.memory_bytes as f64 / GIB);
    if dc == 0.0 && dm == 0.0 {
        return Some(CoverBound { cost: 0.0, per_milli_cpu: 0.0, per_byte: 0.0 });
    }
    let units: Vec<(f64, f64, f64)> = options
        .iter()
        .map(|(capacity, price)| {
            (capacity.milli_cpu as f64 / 1000.0, capacity.memory_bytes as f64 / GIB, *price as f64)
        })
        .collect();
    let mut best: Option<(f64, f64, f64)> = None;
    let mut consider = |cost: f64, y_cpu: f64, y_memory: f64| {
        if best.is_none_or(|(b, _, _)| cost < b) {
            best = Some((cost, y_cpu.max(0.0), y_memory.max(0.0)));
        }
    };
    for &(c, m, p) in &units {
        if (dc > 0.0 && c <= 0.0) || (dm > 0.0 && m <= 0.0) {
            continue;
        }
        let (by_cpu, by_memory) = (if c > 0.0 { dc / c } else { 0.0 }, if m > 0.0 { dm / m } else { 0.0 });
        if by_cpu >= by_memory {
            consider(p * by_cpu, p / c, 0.0);
        } else {
            consider(p * by_memory, 0.0, p / m);
        }
    }
    for (i, &(ci, mi, pi)) in units.iter().enumerate() {
        for &(cj, mj, pj) in &units[i + 1..] {
            let det = ci * mj - cj * mi;
            if det.abs() < 1e-12 {
                continue;
            }
            let xi = (dc * mj - cj * dm) / det;
            let xj = (ci * dm - dc * mi) / det;
            if xi < 0.0 || xj < 0.0 {
                continue;
            }
            consider(pi * xi + pj * xj, (pi * mj - pj * mi) / det, (ci * pj - cj * pi) / det);
        }
    }
    best.map(|(cost, y_cpu, y_memory)| CoverBound { cost, per_milli_cpu: y_cpu / 1000.0, per_byte: y_memory / GIB })
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: u64 = 1 << 30;

    #[test]
    fn one_type_covers_the_binding_dimension() {
        let bound = cover_bound(&[(Resources::new(2000, 4 * G), 100)], Resources::new(10_000, 4 * G)).expect("covers");
        assert!((bound.cost - 500.0).abs() < 1e-6);
        assert!((bound.per_milli_cpu - 0.05).abs() < 1e-9);
    }

    #[test]
    fn a_cpu_heavy_and_a_memory_heavy_type_mix() {
        // Demand 4 cores and 16 GiB: half a cpu-type plus half a memory-type is cheapest.
        let options = [
            (Resources::new(4000, 4 * G), 100),
            (Resources::new(4000, 28 * G), 200),
            (Resources::new(8000, 32 * G), 1000),
        ];
        let bound = cover_bound(&options, Resources::new(4000, 16 * G)).expect("covers");
        assert!((bound.cost - 150.0).abs() < 1e-6, "{bound:?}");
    }

    #[test]
    fn nothing_covers_without_options() {
        assert_eq!(cover_bound(&[], Resources::new(1, 1)), None);
    }
}
