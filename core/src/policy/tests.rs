use super::*;
use crate::schedule::{Constraints, SpotPolicy, WorkloadKind};
use crate::spec::AppSpec;
use proptest::prelude::*;
use std::collections::BTreeMap;

const USD: u64 = 1_000_000;

fn policy(text: &str) -> PolicyDocument {
    PolicyDocument::from_toml(text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn workload() -> Workload {
    Workload {
        name: "checkout".into(),
        team: "payments".into(),
        labels: BTreeMap::from([("env".to_string(), "prod".to_string())]),
        kind: WorkloadKind::Service,
        interruptible: false,
        instances: 3,
        milli_cpu: 3000,
        constraints: Constraints::default(),
    }
}

/// Placeable on aws, azure and openstack; the team runs 1.00/h on aws and 1.00/h on azure.
fn context() -> Context {
    Context {
        month_to_date: 1000 * USD,
        run_rate: BTreeMap::from([("aws".into(), USD), ("azure".into(), USD)]),
        capacity: BTreeMap::from([("aws".into(), 4000), ("azure".into(), 4000)]),
        dry_runs: BTreeMap::from([("aws".into(), USD / 2), ("azure".into(), USD), ("openstack".into(), 2 * USD)]),
        hours_left: 240,
        known_regions: ["eu-west-1", "us-east-1", "westeurope", "RegionOne"].into_iter().map(String::from).collect(),
    }
}

fn messages(verdicts: &Verdicts, rule: Rule) -> Vec<(Outcome, String)> {
    verdicts.verdicts.iter().filter(|v| v.rule == rule).map(|v| (v.outcome, v.message.clone())).collect()
}

fn only(names: &[&str]) -> Allowed {
    Allowed::Only(names.iter().map(|n| n.to_string()).collect())
}

const FULL: &str = r#"
name = "payments-rules"
scope = { team = "payments" }
enforcement = "soft"

[residency]
allowed_providers = ["aws", "azure"]
denied_regions = ["us-east-1"]
allowed_zones = ["eu-west-1a", "eu-west-1b"]

[portability]
min_providers = 2

[concentration]
max_share_percent = 60
measure = "capacity"

[budget]
monthly = "2500.50"

[spot]
services = true
min_on_demand = 2
"#;

#[test]
fn a_complete_document_parses() {
    let document = policy(FULL);
    assert_eq!(document.scope, Scope::Team("payments".into()));
    assert_eq!(document.enforcement, Enforcement::Soft);
    let residency = document.residency.as_ref().expect("residency");
    assert_eq!(residency.providers(), vec![crate::spec::ProviderName::Aws, crate::spec::ProviderName::Azure]);
    assert_eq!(document.portability, Some(Portability { min_providers: 2 }));
    assert_eq!(document.concentration, Some(Concentration { max_share_percent: 60, measure: Measure::Capacity }));
    assert_eq!(document.budget, Some(Budget { monthly: Money(2_500_500_000), webhook_url: None }));
    assert_eq!(document.spot, Some(SpotRule { services: Some(true), batch: None, min_on_demand: 2 }));
    let org = policy("name = \"eu\"\nscope = \"org\"\n[residency]\nallowed_regions = [\"eu-west-1\"]\n");
    assert_eq!((org.scope, org.enforcement), (Scope::Org, Enforcement::Hard));
    let labels = policy("name = \"prod\"\n[scope]\nlabels = { env = \"prod\" }\n[portability]\nmin_providers = 1\n");
    assert_eq!(labels.scope, Scope::Labels(BTreeMap::from([("env".into(), "prod".into())])));
}

#[test]
fn a_team_budget_is_the_strictest_org_or_team_budget() {
    let budget = |name: &str, scope: &str, monthly: &str| {
        policy(&format!(
            "name = \"{name}\"\nscope = {scope}\n[budget]\nmonthly = \"{monthly}\"\nwebhook_url = \"http://hooks/{name}\"\n"
        ))
    };
    let policies = vec![
        budget("org", "\"org\"", "900"),
        budget("payments", "{ team = \"payments\" }", "500"),
        budget("prod", "{ labels = { env = \"prod\" } }", "10"),
        policy("name = \"eu\"\nscope = { team = \"search\" }\n[portability]\nmin_providers = 1\n"),
    ];
    let of = |team: &str| team_budget(&policies, team).map(|b| (b.monthly, b.webhook_url.clone()));
    assert_eq!(of("payments"), Some((Money(500 * USD), Some("http://hooks/payments".into()))));
    // The label-scoped 10.00 does not cover a whole team; the organisation's does.
    assert_eq!(of("search"), Some((Money(900 * USD), Some("http://hooks/org".into()))));
    assert_eq!(team_budget(&policies[1..], "search"), None);
}

#[test]
fn money_is_shown_exactly() {
    let shown: Vec<String> =
        [0, 2_500 * USD, 2_500_500_000, 1_128_000, 2_500_004_000].map(|m| Money(m).to_string()).into();
    assert_eq!(shown, ["0.00", "2500.00", "2500.50", "1.128", "2500.004"]);
}

#[test]
fn errors_name_the_field() {
    let base = "name = \"p\"\nscope = \"org\"\n";
    let cases = [
        (
            "[residency]\nallowed_providers = [\"aws\", \"gcp\"]",
            "residency.allowed_providers[1]: unknown provider \"gcp\" (expected aws, azure, openstack or baremetal)",
        ),
        (
            "[residency]\nallowed_provider = [\"aws\"]",
            "residency.allowed_provider: unknown field `allowed_provider`, expected one of `allowed_providers`, `denied_providers`, `allowed_regions`, `denied_regions`, `allowed_zones`",
        ),
        (
            "[residency]\ndenied_providers = [\"aws\", \"aws\"]",
            "residency.denied_providers[1]: provider \"aws\" is listed twice",
        ),
        (
            "[residency]\nallowed_providers = [\"aws\"]\ndenied_providers = [\"aws\"]",
            "residency.denied_providers[0]: provider \"aws\" is also in allowed_providers",
        ),
        (
            "[residency]\ndenied_providers = [\"aws\", \"azure\", \"openstack\", \"baremetal\"]",
            "residency.denied_providers: every provider is denied",
        ),
        (
            "[residency]\nallowed_regions = [\"\"]",
            "residency.allowed_regions[0]: region \"\" must not be empty or start or end with whitespace",
        ),
        ("[portability]\nmin_providers = 0", "portability.min_providers: must be at least 1"),
        (
            "[residency]\nallowed_providers = [\"aws\"]\n[portability]\nmin_providers = 2",
            "portability.min_providers: 2 providers required but only 1 is allowed",
        ),
        ("[concentration]\nmax_share_percent = 100", "concentration.max_share_percent: must be between 1 and 99"),
        (
            "[residency]\nallowed_providers = [\"aws\", \"azure\"]\n[concentration]\nmax_share_percent = 40",
            "concentration.max_share_percent: 40% can never be met with 2 allowed providers: at least 50% is needed",
        ),
        (
            "[concentration]\nmax_share_percent = 60\nmeasure = \"money\"",
            "concentration.measure: unknown variant `money`, expected `spend` or `capacity`",
        ),
        ("[budget]\nmonthly = \"lots\"", "budget.monthly: \"lots\" is not an amount (like \"2500.00\")"),
        ("[budget]\nmonthly = 2500", "budget.monthly: invalid type: integer `2500`, expected a string"),
        ("[budget]\nmonthly = \"0\"", "budget.monthly: must be more than 0"),
        (
            "[budget]\nmonthly = \"1\"\nwebhook_url = \"ftp://x\"",
            "budget.webhook_url: must be an http:// or https:// URL",
        ),
        (
            "[budget]\nmonthly = \"1\"\nwebhook_url = \"https://\"",
            "budget.webhook_url: must be an http:// or https:// URL",
        ),
        ("[spot]\nmin_on_demand = 5000", "spot.min_on_demand: must be at most 1000"),
        (
            "[spot]\nservice = true",
            "spot.service: unknown field `service`, expected one of `services`, `batch`, `min_on_demand`",
        ),
        (
            "colour = \"red\"\n[spot]",
            "colour: unknown field `colour`, expected one of `name`, `scope`, `enforcement`, `residency`, `portability`, `concentration`, `budget`, `spot`",
        ),
        (
            "",
            "(document): a policy needs at least one rule: [residency], [portability], [concentration], [budget] or [spot]",
        ),
    ];
    for (rules, expected) in cases {
        let error = PolicyDocument::from_toml(&format!("{base}{rules}\n")).expect_err(rules);
        assert_eq!(error.to_string(), expected, "{rules}");
    }
    let scopes = [
        ("name = \"p\"\nscope = \"everyone\"\n[spot]", "scope"),
        ("name = \"p\"\nscope = { team = \"Pay Ments\" }\n[spot]", "scope.team"),
        ("name = \"p\"\nscope = { labels = {} }\n[spot]", "scope.labels"),
        ("name = \"P\"\nscope = \"org\"\n[spot]", "name"),
        ("scope = \"org\"\n[spot]", "(document)"),
        ("name = \"p\"\nscope = \"org\"\nenforcement = \"strict\"\n[spot]", "enforcement"),
    ];
    for (text, field) in scopes {
        assert_eq!(PolicyDocument::from_toml(text).expect_err(text).field, field, "{text}");
    }
}

#[test]
fn scope_matches_the_team_and_every_label() {
    let org = policy("name = \"a\"\nscope = \"org\"\n[spot]\n");
    let team = policy("name = \"b\"\nscope = { team = \"payments\" }\n[spot]\n");
    let other = policy("name = \"c\"\nscope = { team = \"search\" }\n[spot]\n");
    let prod = policy("name = \"d\"\nscope = { labels = { env = \"prod\" } }\n[spot]\n");
    let prod_eu = policy("name = \"e\"\nscope = { labels = { env = \"prod\", region = \"eu\" } }\n[spot]\n");
    let staging = policy("name = \"f\"\nscope = { labels = { env = \"staging\" } }\n[spot]\n");
    let verdicts = evaluate(&[org, team, other, prod, prod_eu, staging], &workload(), &context());
    assert_eq!(verdicts.applied, ["a", "b", "d"]);
}

#[test]
fn no_policy_allows_everything() {
    let verdicts = evaluate(&[], &workload(), &context());
    assert_eq!(verdicts.policy, Some(crate::schedule::Policy::default()));
    assert!(verdicts.verdicts.is_empty() && !verdicts.refused());
}

const EU: &str = "name = \"eu-only\"\nscope = \"org\"\n[residency]\nallowed_providers = [\"aws\", \"azure\"]\nallowed_regions = [\"eu-west-1\", \"westeurope\"]\n";

#[test]
fn residency_narrows_the_scheduler_policy_and_constraints() {
    let verdicts = evaluate(&[policy(EU)], &workload(), &context());
    assert_eq!(
        messages(&verdicts, Rule::Residency),
        [(Outcome::Allow, "the workload may run in providers aws, azure; regions eu-west-1, westeurope".into())]
    );
    let scheduler = verdicts.policy.as_ref().expect("somewhere is allowed");
    assert_eq!(scheduler.allowed_providers, ["aws", "azure"]);
    assert_eq!(scheduler.allowed_regions, ["eu-west-1", "westeurope"]);
    let own = Constraints { providers: vec!["azure".into(), "openstack".into()], ..Constraints::default() };
    let narrowed = verdicts.places.constrain(&own).expect("azure is left");
    assert_eq!(
        (narrowed.providers, narrowed.regions),
        (vec!["azure".into()], vec!["eu-west-1".into(), "westeurope".into()])
    );
}

#[test]
fn residency_refuses_a_workload_pinned_elsewhere() {
    let mut pinned = workload();
    pinned.constraints.regions = vec!["us-east-1".into()];
    let verdicts = evaluate(&[policy(EU)], &pinned, &context());
    assert!(verdicts.refused());
    assert_eq!(
        verdicts.verdicts[0].to_string(),
        "policy eu-only (residency): the workload asks for regions us-east-1; the policy allows eu-west-1, westeurope"
    );
}

#[test]
fn a_denied_region_is_taken_from_the_known_regions() {
    let text = "name = \"not-us\"\nscope = \"org\"\n[residency]\ndenied_regions = [\"us-east-1\"]\ndenied_providers = [\"baremetal\"]\n";
    let verdicts = evaluate(&[policy(text)], &workload(), &context());
    let scheduler = verdicts.policy.expect("allowed");
    assert_eq!(scheduler.allowed_regions, ["RegionOne", "eu-west-1", "westeurope"]);
    assert_eq!(scheduler.allowed_providers, ["aws", "azure", "openstack"]);
}

#[test]
fn two_policies_combine_to_the_intersection() {
    let aws_azure = policy(EU);
    let zones = "name = \"zonal\"\nscope = { team = \"payments\" }\n[residency]\nallowed_providers = [\"azure\", \"openstack\"]\nallowed_zones = [\"1\", \"2\"]\n";
    let verdicts = evaluate(&[aws_azure, policy(zones)], &workload(), &context());
    assert!(!verdicts.refused());
    assert_eq!(verdicts.places.providers, only(&["azure"]));
    assert_eq!(verdicts.places.regions, only(&["eu-west-1", "westeurope"]));
    assert_eq!(verdicts.places.zones, only(&["1", "2"]));
    assert_eq!(verdicts.policy.expect("allowed").allowed_providers, ["azure"]);
}

#[test]
fn two_policies_with_nothing_in_common_refuse_and_leave_no_scheduler_policy() {
    let us = "name = \"us-only\"\nscope = \"org\"\n[residency]\nallowed_regions = [\"us-east-1\"]\n";
    let verdicts = evaluate(&[policy(EU), policy(us)], &workload(), &context());
    assert_eq!(verdicts.policy, None);
    assert_eq!(
        messages(&verdicts, Rule::Residency)[1],
        (
            Outcome::Refuse,
            "no regions left: the policy allows us-east-1, the workload and eu-only allow eu-west-1, westeurope".into()
        )
    );
}

#[test]
fn soft_residency_warns_and_binds_nothing() {
    let soft = EU.replace("scope = \"org\"", "scope = \"org\"\nenforcement = \"soft\"");
    let verdicts = evaluate(&[policy(&soft)], &workload(), &context());
    assert_eq!(verdicts.policy, Some(crate::schedule::Policy::default()));
    assert_eq!(
        messages(&verdicts, Rule::Residency),
        [(
            Outcome::Warn,
            "the workload may be placed outside the policy: any of its providers (allowed: aws, azure); any of its regions (allowed: eu-west-1, westeurope)".into()
        )]
    );
    let mut pinned = workload();
    pinned.constraints.providers = vec!["aws".into()];
    pinned.constraints.regions = vec!["eu-west-1".into()];
    let verdicts = evaluate(&[policy(&soft)], &pinned, &context());
    assert_eq!(
        messages(&verdicts, Rule::Residency),
        [(Outcome::Allow, "the workload stays within providers aws, azure; regions eu-west-1, westeurope".into())]
    );
}

const PORTABLE: &str = "name = \"portable\"\nscope = \"org\"\n[portability]\nmin_providers = 2\n";

#[test]
fn portability_counts_the_allowed_providers_a_dry_run_could_place_on() {
    let verdicts = evaluate(&[policy(PORTABLE)], &workload(), &context());
    assert_eq!(
        messages(&verdicts, Rule::Portability),
        [(
            Outcome::Allow,
            "the workload could be placed on 3 providers (aws, azure, openstack), at least 2 required".into()
        )]
    );
    // Only aws has the offering the workload needs.
    let mut context = context();
    context.dry_runs.retain(|provider, _| provider == "aws");
    let verdicts = evaluate(&[policy(PORTABLE)], &workload(), &context);
    assert!(verdicts.refused());
    assert_eq!(
        verdicts.verdicts[0].to_string(),
        "policy portable (portability): the workload could be placed on 1 provider (aws), at least 2 required"
    );
}

#[test]
fn portability_ignores_providers_residency_rules_out() {
    let verdicts = evaluate(&[policy(EU), policy(&PORTABLE.replace("= 2", "= 3"))], &workload(), &context());
    assert_eq!(
        messages(&verdicts, Rule::Portability),
        [(Outcome::Refuse, "the workload could be placed on 2 providers (aws, azure), at least 3 required".into())]
    );
}

const SPREAD: &str = "name = \"spread\"\nscope = { team = \"payments\" }\n[concentration]\nmax_share_percent = 60\n";

#[test]
fn concentration_refuses_when_every_place_would_exceed_the_limit() {
    // The team runs 3.00/h on aws and 1.00/h on azure; the workload fits only on aws (0.50/h):
    // 3.50 of 4.50 is 77.8%.
    let mut context = context();
    context.run_rate.insert("aws".into(), 3 * USD);
    context.dry_runs.retain(|provider, _| provider == "aws");
    let verdicts = evaluate(&[policy(SPREAD)], &workload(), &context);
    assert!(verdicts.refused());
    assert_eq!(
        verdicts.verdicts[0].to_string(),
        "policy spread (concentration): team payments: 77.8% of spend would be on aws, limit 60%"
    );
}

#[test]
fn concentration_allows_within_the_limit_and_steers_away_from_a_provider_over_it() {
    // aws: 1.50 of 2.50 = 60% (at the limit), azure: 2.00 of 3.00 = 66.7%, openstack 2.00 of 4.00.
    let verdicts = evaluate(&[policy(SPREAD)], &workload(), &context());
    assert!(!verdicts.refused());
    assert_eq!(
        messages(&verdicts, Rule::Concentration),
        [(
            Outcome::Allow,
            "team payments: 66.7% of spend would be on azure, limit 60%; 60% on aws, 50% on openstack instead: the workload goes there".into()
        )]
    );
    assert_eq!(verdicts.policy.expect("allowed").allowed_providers, ["aws", "baremetal", "openstack"]);
    // Nothing is over: no provider is excluded.
    let relaxed = SPREAD.replace("60", "70");
    let verdicts = evaluate(&[policy(&relaxed)], &workload(), &context());
    assert_eq!(
        messages(&verdicts, Rule::Concentration),
        [(
            Outcome::Allow,
            "team payments: 60% of spend would be on aws (or 66.7% on azure, 50% on openstack), limit 70%".into()
        )]
    );
    assert_eq!(verdicts.policy.expect("allowed").allowed_providers, Vec::<String>::new());
}

#[test]
fn concentration_measures_capacity_and_lets_a_teams_first_workload_in() {
    let capacity = SPREAD.replace("60", "50\nmeasure = \"capacity\"");
    let mut context = context();
    context.dry_runs.retain(|provider, _| provider == "aws");
    // aws: 4000 + 3000 of 11000 millicpu.
    let verdicts = evaluate(&[policy(&capacity)], &workload(), &context);
    assert_eq!(
        messages(&verdicts, Rule::Concentration),
        [(Outcome::Refuse, "team payments: 63.7% of capacity (cpu) would be on aws, limit 50%".into())]
    );
    context.run_rate.clear();
    let verdicts = evaluate(&[policy(SPREAD)], &workload(), &context);
    assert_eq!(
        messages(&verdicts, Rule::Concentration),
        [(Outcome::Allow, "team payments has no spend yet: any first placement is all on one provider".into())]
    );
}

const BUDGET: &str = "name = \"payments-budget\"\nscope = { team = \"payments\" }\n[budget]\nmonthly = \"2500.00\"\n";

#[test]
fn budget_forecasts_from_the_run_rate_and_the_cheapest_place() {
    // 1000.00 + (2.00 + 0.50) * 240 h = 1600.00.
    let verdicts = evaluate(&[policy(BUDGET)], &workload(), &context());
    assert_eq!(
        messages(&verdicts, Rule::Budget),
        [(
            Outcome::Allow,
            "team payments: forecast spend this month 1600.00 of a budget of 2500.00 (month to date 1000.00, then 2.00/h running + 0.50/h for this workload on aws over 240 h)".into()
        )]
    );
}

#[test]
fn a_hard_budget_refuses_a_forecast_over_it_and_a_soft_one_warns() {
    // 1900.00 + 2.50 * 240 h = 2500.00 is within; one more cent month to date is over.
    let mut context = context();
    context.month_to_date = 1900 * USD;
    assert!(!evaluate(&[policy(BUDGET)], &workload(), &context).refused());
    context.month_to_date += 10_000;
    let verdicts = evaluate(&[policy(BUDGET)], &workload(), &context);
    assert_eq!(
        verdicts.verdicts[0].to_string(),
        "policy payments-budget (budget): team payments: forecast spend this month 2500.01 would exceed the budget of 2500.00 (month to date 1900.01, then 2.00/h running + 0.50/h for this workload on aws over 240 h)"
    );
    assert!(verdicts.refused());
    let soft = BUDGET.replace("[budget]", "enforcement = \"soft\"\n[budget]");
    let verdicts = evaluate(&[policy(&soft)], &workload(), &context);
    assert_eq!(verdicts.verdicts[0].outcome, Outcome::Warn);
    assert!(!verdicts.refused());
}

#[test]
fn a_hard_budget_keeps_the_workload_off_places_that_would_exceed_it() {
    // aws: 1600.00, azure: 1720.00, openstack: 1960.00 against 1800.00.
    let tight = BUDGET.replace("2500.00", "1800");
    let verdicts = evaluate(&[policy(&tight)], &workload(), &context());
    assert!(messages(&verdicts, Rule::Budget)[0].1.ends_with("; not on openstack, which would exceed it"));
    assert_eq!(verdicts.policy.expect("allowed").allowed_providers, ["aws", "azure", "baremetal"]);
}

#[test]
fn spot_rules_combine_strictest_first_and_never_refuse() {
    let services = "name = \"svc-spot\"\nscope = \"org\"\n[spot]\nservices = true\nmin_on_demand = 2\n";
    let no_batch = "name = \"no-batch-spot\"\nscope = \"org\"\n[spot]\nbatch = false\nmin_on_demand = 1\n";
    let mut service = workload();
    service.interruptible = true;
    let verdicts = evaluate(&[policy(services), policy(no_batch)], &service, &context());
    let scheduler = verdicts.policy.as_ref().expect("allowed");
    assert_eq!(scheduler.spot, SpotPolicy { service: true, batch: false });
    assert_eq!(verdicts.min_on_demand, 2);
    assert_eq!(
        messages(&verdicts, Rule::Spot),
        [
            (Outcome::Allow, "2 of the workload's 3 instances run on on-demand capacity (at least 2 required)".into()),
            (Outcome::Allow, "services may not use spot: the workload runs on on-demand capacity".into()),
        ]
    );
    let mut job = service.clone();
    job.kind = WorkloadKind::Batch;
    let verdicts = evaluate(&[policy(services), policy(no_batch)], &job, &context());
    assert_eq!(verdicts.min_on_demand, 0);
    assert_eq!(
        messages(&verdicts, Rule::Spot),
        [
            (Outcome::Allow, "batch jobs may use spot".into()),
            (Outcome::Allow, "batch jobs may not use spot: the workload runs on on-demand capacity".into()),
        ]
    );
    let soft = no_batch.replace("[spot]", "enforcement = \"soft\"\n[spot]");
    let verdicts = evaluate(&[policy(&soft)], &job, &context());
    assert_eq!(verdicts.policy.as_ref().expect("allowed").spot, SpotPolicy::default());
    assert_eq!(
        messages(&verdicts, Rule::Spot),
        [(Outcome::Warn, "batch jobs should not use spot, and the workload may".into())]
    );
}

#[test]
fn a_workload_is_read_from_its_app_spec() {
    let spec = AppSpec::from_toml(
        "name = \"etl\"\ncommand = \"x\"\ninterruptible = true\n[resources]\ncpu = 500\nmemory = \"64Mi\"\n[job]\nparallelism = 4\n[placement]\nproviders = [\"aws\"]\n",
    )
    .expect("spec");
    let workload = Workload::from_spec(&spec, "data", BTreeMap::new());
    assert_eq!((workload.kind, workload.instances, workload.milli_cpu), (WorkloadKind::Batch, 4, 2000));
    assert!(workload.interruptible);
    assert_eq!(workload.constraints.providers, ["aws"]);
}

#[test]
fn every_refusal_names_its_policy_and_rule() {
    let mut context = context();
    context.dry_runs.retain(|provider, _| provider == "aws");
    context.month_to_date = 5000 * USD;
    context.run_rate.insert("aws".into(), 3 * USD);
    let all = [policy(PORTABLE), policy(SPREAD), policy(BUDGET)];
    let verdicts = evaluate(&all, &workload(), &context);
    let refusals: Vec<String> =
        verdicts.with_outcome(Outcome::Refuse).map(|v| format!("{} {}", v.policy, v.rule.as_str())).collect();
    assert_eq!(refusals, ["portable portability", "spread concentration", "payments-budget budget"]);
}

const PROVIDERS: [&str; 4] = ["aws", "azure", "openstack", "baremetal"];
const REGIONS: [&str; 4] = ["eu-west-1", "us-east-1", "westeurope", "RegionOne"];

fn subset(mask: u8, names: &[&str]) -> Vec<String> {
    names.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, n)| format!("{n:?}")).collect()
}

/// A hard org policy allowing the providers and regions in `allowed` and denying those in `denied`
/// (the overlap removed from the denied list, which the format refuses).
fn random_policy(index: usize, allowed: (u8, u8), denied: (u8, u8)) -> Option<PolicyDocument> {
    let text = format!(
        "name = \"p{index}\"\nscope = \"org\"\n[residency]\nallowed_providers = [{}]\ndenied_providers = [{}]\nallowed_regions = [{}]\ndenied_regions = [{}]\n",
        subset(allowed.0, &PROVIDERS).join(", "),
        subset(denied.0 & !allowed.0, &PROVIDERS).join(", "),
        subset(allowed.1, &REGIONS).join(", "),
        subset(denied.1 & !allowed.1, &REGIONS).join(", "),
    );
    // Denying every provider is refused by the format; such a policy is just not generated.
    PolicyDocument::from_toml(&text).ok()
}

proptest! {
    #[test]
    fn the_combined_places_are_within_each_hard_policys(
        rules in proptest::collection::vec(((0u8..16, 0u8..16), (0u8..16, 0u8..16)), 1..4),
        budget in 1u64..3000,
    ) {
        let mut policies: Vec<PolicyDocument> =
            rules.iter().enumerate().filter_map(|(i, (a, d))| random_policy(i, *a, *d)).collect();
        policies.push(policy(&SPREAD.replace("60", "55")));
        policies.push(policy(&BUDGET.replace("2500.00", &budget.to_string())));
        let context = context();
        let verdicts = evaluate(&policies, &workload(), &context);
        for document in policies.iter().filter(|p| p.residency.is_some()) {
            let own = Places::of(document.residency.as_ref().expect("residency"), &context.known_regions);
            prop_assert!(verdicts.places.providers.is_within(&own.providers));
            prop_assert!(verdicts.places.regions.is_within(&own.regions));
            if let Some(scheduler) = &verdicts.policy {
                for provider in PROVIDERS.iter().filter(|p| scheduler.allows_provider(p)) {
                    prop_assert!(own.providers.allows(provider), "{provider} allowed by the combination, not by {}", document.name);
                }
                for region in context.known_regions.iter().filter(|r| scheduler.allows_region(r)) {
                    prop_assert!(own.regions.allows(region), "{region} allowed by the combination, not by {}", document.name);
                }
            }
        }
        // No place left is exactly what a refusal is for.
        prop_assert!(verdicts.policy.is_some() || verdicts.refused());
    }
}

/// Regression (found by the proptest above): a hard policy refused for leaving no region did
/// not narrow the providers, so the combination allowed providers it denies.
#[test]
fn a_refused_hard_residency_rule_still_binds_the_places() {
    let text = "name = \"p\"\nscope = \"org\"\n[residency]\nallowed_providers = [\"aws\"]\ndenied_regions = [\"eu-west-1\", \"us-east-1\", \"westeurope\", \"RegionOne\"]\n";
    let verdicts = evaluate(&[policy(text)], &workload(), &context());
    assert!(verdicts.refused());
    assert_eq!(verdicts.places.providers, only(&["aws"]));
    assert_eq!(verdicts.policy, None);
}

#[test]
fn the_example_policy_parses() {
    let document = policy(include_str!("../../../examples/policies/payments.toml"));
    assert_eq!(document.scope, Scope::Team("payments".into()));
    assert_eq!(document.budget.map(|b| b.monthly), Some(Money(2500 * USD)));
}

mod assessment {
    use super::*;
    use crate::Resources;
    use crate::schedule::{Catalog, MachineView, Offering, Policy, Snapshot, TaskAsk};
    use std::sync::Arc;

    const GIB: u64 = 1 << 30;

    fn offering(provider: &str, region: &str, price: u64) -> Offering {
        Offering {
            provider: provider.into(),
            region: region.into(),
            instance_type: format!("{provider}-small"),
            capacity: Resources::new(1000, GIB),
            price_on_demand: price,
            price_spot: Some(price / 4),
            ..Default::default()
        }
    }

    /// aws at 0.10/h, azure at 0.20/h, and an existing openstack machine too small for a task.
    fn snapshot() -> Snapshot {
        Snapshot {
            machines: vec![MachineView {
                id: uuid::Uuid::from_u128(99),
                capacity: Resources::new(500, 2 * GIB),
                provider: "openstack".into(),
                region: "RegionOne".into(),
                offering: "os-medium".into(),
                price: 400_000,
                ..Default::default()
            }],
            catalog: Arc::new(Catalog {
                offerings: vec![offering("aws", "us-east-1", 100_000), offering("azure", "westeurope", 200_000)],
            }),
            policy: Policy { spot: SpotPolicy { service: true, batch: true }, ..Default::default() },
            ..Default::default()
        }
    }

    fn asks(count: u128, interruptible: bool) -> Vec<TaskAsk> {
        (0..count)
            .map(|i| TaskAsk {
                id: uuid::Uuid::from_u128(i + 1),
                group: "checkout".into(),
                resources: Resources::new(600, GIB / 2),
                interruptible,
                ..Default::default()
            })
            .collect()
    }

    fn empty_context() -> Context {
        Context { hours_left: 100, ..Default::default() }
    }

    #[test]
    fn each_provider_is_dry_run_and_the_placement_is_the_cheapest_allowed() {
        let assessment = assess(&[], &workload(), &asks(2, false), &snapshot(), &empty_context(), 7);
        let runs: Vec<(&str, Option<Money>)> = assessment.runs.iter().map(|r| (r.provider.as_str(), r.cost)).collect();
        assert_eq!(
            runs,
            vec![
                ("aws", Some(Money(200_000))),
                ("azure", Some(Money(400_000))),
                ("openstack", None),
                ("baremetal", None)
            ]
        );
        assert!(assessment.runs[2].unplaced.as_deref().is_some_and(|why| why.contains("cpu")), "{assessment:?}");
        assert_eq!(assessment.unplaced, None);
        assert_eq!(assessment.binding, Binding::default());
        assert!(assessment.placement.iter().all(|p| p.provider == "aws" && p.machine.is_none()));
        assert_eq!(assessment.cost, Money(200_000));
    }

    #[test]
    fn a_hard_residency_rule_binds_the_placement_and_a_refusal_places_nothing() {
        let eu = policy("name = \"eu\"\nscope = \"org\"\n[residency]\nallowed_providers = [\"azure\"]\n");
        let assessment =
            assess(std::slice::from_ref(&eu), &workload(), &asks(1, false), &snapshot(), &empty_context(), 7);
        assert_eq!(assessment.binding.providers, Some(vec!["azure".to_string()]));
        assert_eq!(assessment.runs.len(), 1, "only azure is dry-run");
        assert_eq!(assessment.placement[0].provider, "azure");

        let two = policy("name = \"two\"\nscope = \"org\"\n[portability]\nmin_providers = 2\n");
        let assessment = assess(&[eu, two], &workload(), &asks(1, false), &snapshot(), &empty_context(), 7);
        assert!(assessment.verdicts.refused());
        assert!(assessment.placement.is_empty());
        assert_eq!(assessment.unplaced.as_deref(), Some("refused by policy"));
    }

    #[test]
    fn a_hard_spot_rule_keeps_interruptible_services_on_demand_and_min_on_demand_keeps_the_first_instances() {
        let interruptible = Workload { interruptible: true, ..workload() };
        let free = assess(&[], &interruptible, &asks(1, true), &snapshot(), &empty_context(), 7);
        assert!(free.placement[0].spot, "without a rule spot is the cheapest: {free:?}");

        let no_spot = policy("name = \"s\"\nscope = \"org\"\n[spot]\nservices = false\n");
        let kept = assess(&[no_spot], &interruptible, &asks(1, true), &snapshot(), &empty_context(), 7);
        assert!(!kept.binding.spot);
        assert!(!kept.placement[0].spot, "{kept:?}");

        let two = policy("name = \"m\"\nscope = \"org\"\n[spot]\nmin_on_demand = 2\n");
        let mixed = assess(&[two], &interruptible, &asks(3, true), &snapshot(), &empty_context(), 7);
        assert_eq!(mixed.binding.min_on_demand, 2);
        let spot: u32 = mixed.placement.iter().filter(|p| p.spot).map(|p| p.tasks).sum();
        assert_eq!(spot, 1, "instances 0 and 1 on demand, 2 on spot: {mixed:?}");
        assert!(!mixed.binding.interruptible(true, 1) && mixed.binding.interruptible(true, 2));
    }

    #[test]
    fn an_hourly_share_is_the_request_share_of_the_price() {
        // Half the cpu and half the memory: half the price, whatever the split.
        assert_eq!(hourly_share(1_000_000, Resources::new(2000, 2 * GIB), Resources::new(1000, GIB)), 500_000);
        assert_eq!(hourly_share(1_000_000, Resources::new(2000, 2 * GIB), Resources::new(2000, 2 * GIB)), 1_000_000);
    }
}
