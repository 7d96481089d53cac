//! Shared helpers for the scheduler benchmarks: the shipped data, a seeded generator, medians
//! and the LP lower bound (microlp, a dev-dependency only).

#![allow(dead_code)]

use canopy_core::Resources;
use canopy_core::schedule::{Catalog, Offering};
use std::time::Instant;

pub const GIB: u64 = 1 << 30;

pub fn data_path(relative: &str) -> String {
    format!("{}/data/{relative}", env!("CARGO_MANIFEST_DIR"))
}

/// The full shipped catalogs (AWS and Azure).
pub fn full_catalog() -> Catalog {
    let mut catalog = Catalog::default();
    for file in ["prices/aws.csv", "prices/azure.csv"] {
        let text = std::fs::read_to_string(data_path(file)).expect("shipped price catalog is readable");
        catalog.extend(Catalog::from_csv(&text).expect("shipped price catalog parses"));
    }
    catalog
}

pub fn find<'a>(catalog: &'a Catalog, provider: &str, region: &str, instance_type: &str) -> &'a Offering {
    catalog
        .offerings
        .iter()
        .find(|o| o.provider == provider && o.region == region && o.instance_type == instance_type)
        .expect("offering is in the shipped catalog")
}

/// SplitMix64: seeded and reproducible, no dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut x = self.0;
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^ (x >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// Picks an index by integer weights.
    pub fn weighted(&mut self, weights: &[u64]) -> usize {
        let total: u64 = weights.iter().sum();
        let mut pick = self.below(total);
        for (i, &w) in weights.iter().enumerate() {
            if pick < w {
                return i;
            }
            pick -= w;
        }
        weights.len() - 1
    }
}

/// Runs `f` `runs` times and returns the median wall time in seconds and the last result.
pub fn median_time<T>(runs: usize, mut f: impl FnMut() -> T) -> (f64, T) {
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..runs {
        let start = Instant::now();
        let out = f();
        times.push(start.elapsed().as_secs_f64());
        last = Some(out);
    }
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2], last.expect("at least one run"))
}

/// A machine type the LP may buy: capacity, hourly price in micro-dollars, how many exist
/// (`None`: unlimited), and which commodities (bit per commodity) may use it.
#[derive(Clone)]
pub struct LpOption {
    pub capacity: Resources,
    pub price: u64,
    pub available: Option<f64>,
    pub eligible: Vec<bool>,
}

/// Work of one size that the LP must cover: size and count.
pub struct LpCommodity {
    pub size: Resources,
    pub count: f64,
}

/// The LP relaxation of "buy machines to hold this work": machines x_j >= 0 (fractional, at
/// most `available`), each commodity's tasks split over the machine types it may use
/// (a_sj >= 0, sum_j a_sj = count_s), and each machine type's cpu and memory covering what is
/// put on it. Any real packing is a feasible point, so the optimum is a lower bound.
/// Returns micro-dollars per hour.
pub fn lp_bound(options: &[LpOption], commodities: &[LpCommodity]) -> f64 {
    use microlp::{ComparisonOp, OptimizationDirection, Problem};
    let mut problem = Problem::new(OptimizationDirection::Minimize);
    // Dollars, cores and GiB keep the coefficients within a few orders of magnitude.
    let machines: Vec<_> = options
        .iter()
        .map(|o| problem.add_var(o.price as f64 / 1e6, (0.0, o.available.unwrap_or(f64::INFINITY))))
        .collect();
    let mut cpu_rows: Vec<Vec<(microlp::Variable, f64)>> =
        options.iter().enumerate().map(|(j, o)| vec![(machines[j], -(o.capacity.milli_cpu as f64) / 1000.0)]).collect();
    let mut memory_rows: Vec<Vec<(microlp::Variable, f64)>> = options
        .iter()
        .enumerate()
        .map(|(j, o)| vec![(machines[j], -(o.capacity.memory_bytes as f64) / GIB as f64)])
        .collect();
    for (s, commodity) in commodities.iter().enumerate() {
        let mut split = Vec::new();
        for (j, option) in options.iter().enumerate() {
            if !option.eligible[s] || !option.capacity.fits(&commodity.size) {
                continue;
            }
            // In units of "share of the commodity's tasks", so the row sums to one.
            let a = problem.add_var(0.0, (0.0, f64::INFINITY));
            split.push((a, 1.0));
            cpu_rows[j].push((a, commodity.count * commodity.size.milli_cpu as f64 / 1000.0));
            memory_rows[j].push((a, commodity.count * commodity.size.memory_bytes as f64 / GIB as f64));
        }
        problem.add_constraint(&split, ComparisonOp::Eq, 1.0);
    }
    for row in cpu_rows.iter().chain(memory_rows.iter()) {
        problem.add_constraint(row, ComparisonOp::Le, 0.0);
    }
    let solution = problem.solve().expect("the LP bound solves").into_solution().expect("the LP bound finishes");
    solution.objective() * 1e6
}
