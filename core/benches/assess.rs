//! What a deploy under policies costs the control service: `canopy_core::policy::assess` (a dry
//! run per allowed provider, the verdicts, the placement it would make) for a 10-instance
//! service under three org policies (residency, portability, concentration), against the full
//! shipped catalogs (AWS + Azure, every region) and 200 existing machines.
//!
//! `cargo bench -p canopy-core --bench assess`

mod common;

use canopy_core::Resources;
use canopy_core::policy::{Context, PolicyDocument, Workload, assess};
use canopy_core::schedule::{MachineView, Policy, Snapshot, SpotPolicy, TaskAsk, WorkloadKind};
use common::{GIB, Rng, full_catalog, median_time};
use std::collections::BTreeMap;
use std::sync::Arc;
use uuid::Uuid;

const INSTANCES: u128 = 10;
const MACHINES: u128 = 200;

fn main() {
    let catalog = Arc::new(full_catalog());
    // Half the existing machines on each cloud, 4 cpus / 16 GiB, about half full.
    let mut rng = Rng(11);
    let machines: Vec<MachineView> = (0..MACHINES)
        .map(|i| {
            let provider = if i % 2 == 0 { "aws" } else { "azure" };
            MachineView {
                id: Uuid::from_u128(1_000 + i),
                capacity: Resources::new(4000, 16 * GIB),
                allocated: Resources::new(500 * (rng.below(6) + 1), GIB * (rng.below(8) + 1)),
                provider: provider.into(),
                region: if provider == "aws" { "us-east-1".into() } else { "eastus".into() },
                offering: "m".into(),
                price: 150_000,
                ..Default::default()
            }
        })
        .collect();
    let snapshot = Snapshot {
        machines,
        catalog: catalog.clone(),
        policy: Policy { spot: SpotPolicy { service: true, batch: true }, ..Default::default() },
        ..Default::default()
    };
    let policies: Vec<PolicyDocument> = [
        "name = \"clouds\"\nscope = \"org\"\n[residency]\nallowed_providers = [\"aws\", \"azure\"]\n",
        "name = \"two\"\nscope = \"org\"\n[portability]\nmin_providers = 2\n",
        "name = \"spread\"\nscope = \"org\"\n[concentration]\nmax_share_percent = 70\n",
    ]
    .iter()
    .map(|text| PolicyDocument::from_toml(text).expect("policy"))
    .collect();
    let asks: Vec<TaskAsk> = (0..INSTANCES)
        .map(|i| TaskAsk {
            id: Uuid::from_u128(i + 1),
            group: "checkout".into(),
            resources: Resources::new(1000, 2 * GIB),
            kind: WorkloadKind::Service,
            ..Default::default()
        })
        .collect();
    let workload = Workload {
        name: "checkout".into(),
        team: "payments".into(),
        kind: WorkloadKind::Service,
        instances: INSTANCES as u32,
        milli_cpu: 1000 * INSTANCES as u64,
        ..Default::default()
    };
    let context = Context {
        month_to_date: 900_000_000,
        run_rate: BTreeMap::from([("aws".into(), 2_000_000), ("azure".into(), 1_500_000)]),
        hours_left: 240,
        known_regions: catalog.offerings.iter().map(|o| o.region.clone()).collect(),
        ..Default::default()
    };
    let (seconds, assessment) = median_time(9, || assess(&policies, &workload, &asks, &snapshot, &context, 7));
    let runs: Vec<String> = assessment
        .runs
        .iter()
        .map(|r| format!("{}={}", r.provider, r.cost.map_or_else(|| "-".into(), |c| c.to_string())))
        .collect();
    println!("assess: {} offerings, {MACHINES} machines, {INSTANCES} instances", catalog.offerings.len());
    println!(
        "  median of 9 runs: {:.1} ms; dry runs {}; placement {}/h",
        seconds * 1e3,
        runs.join(" "),
        assessment.cost
    );
    println!(
        "bench=assess offerings={} machines={MACHINES} instances={INSTANCES} ms={:.1} refused={}",
        catalog.offerings.len(),
        seconds * 1e3,
        assessment.verdicts.refused()
    );
}
