//! The provider conformance suite against the local OpenStack fake
//! (`localstack/openstack/canopy_openstack.py`, standard-library Python, one process per test),
//! plus authentication checks. Every check runs, and all failures are reported together.
//!
//! Pointed at a real Keystone + Nova instead (`localstack/openstack/real/run.sh` does this), by
//! `CANOPY_OPENSTACK_CONFORMANCE_URL` (Keystone) with `CANOPY_OPENSTACK_CONFORMANCE_USERNAME`,
//! `_PASSWORD`, `_PROJECT`, `_IMAGE`, `_NETWORK` (optional), `_REGION` (default RegionOne),
//! `_FLAVOR` (default m1.small) and `_ZONE` (default nova), the checks that need no injected
//! fault run against it.

use canopy_provider_openstack::{Credentials, OpenStackConfig, OpenStackProvider};
use canopy_providers::conformance::{self, ControlFaults, Faults, Fixture};
use canopy_providers::{Provider, ProviderError};
use std::path::PathBuf;

/// The fake, killed when the test ends however it ends.
struct Emulator {
    _process: conformance::Emulator,
    url: String,
}

impl Emulator {
    fn start() -> Emulator {
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
        let process = conformance::Emulator::start(&repo, None, "localstack/openstack/canopy_openstack.py", &[])
            .expect("start python3 canopy_openstack.py");
        Emulator { url: process.url.clone(), _process: process }
    }

    fn config(&self, credentials: Credentials) -> OpenStackConfig {
        OpenStackConfig::new(&format!("{}/v3", self.url), credentials, "RegionOne", "cirros-0.6.2")
    }
}

/// The fake's preset user and application credential (its CLI defaults).
fn password(password: &str) -> Credentials {
    Credentials::Password {
        username: "canopy".into(),
        user_domain: "Default".into(),
        password: password.into(),
        project: "canopy".into(),
        project_domain: "Default".into(),
    }
}

fn app_credential(secret: &str) -> Credentials {
    Credentials::ApplicationCredential { id: "canopy-app-cred".into(), secret: secret.into() }
}

fn fixture<'a>(provider: &'a OpenStackProvider, faults: &'a dyn Faults, zone: &str, flavor: &str) -> Fixture<'a> {
    Fixture {
        provider,
        faults,
        region: "RegionOne".into(),
        zone: zone.into(),
        instance_type: flavor.into(),
        cluster: format!("conformance-{}", uuid::Uuid::new_v4()),
        spot: false,
        quota: true,
    }
}

#[tokio::test]
async fn openstack_passes_the_provider_conformance_suite() {
    let emulator = Emulator::start();
    let provider = OpenStackProvider::new(emulator.config(password("canopy-secret"))).await.expect("connect");
    let faults = ControlFaults::new(&emulator.url);
    let failures = conformance::run_all(&fixture(&provider, &faults, "nova", "m1.small")).await;
    assert!(failures.is_empty(), "conformance failures:\n{}", failures.join("\n"));
}

#[tokio::test]
async fn application_credentials_work_and_bad_credentials_are_auth_errors() {
    let emulator = Emulator::start();
    let provider = OpenStackProvider::new(emulator.config(app_credential("canopy-app-cred-secret")))
        .await
        .expect("application credential accepted");
    let offerings = provider.offerings().await.expect("offerings");
    assert!(offerings.iter().all(|o| o.sunk && o.provider == "openstack" && o.zones.contains(&"nova".to_string())));
    let quota = provider.limits().await.expect("quota");
    assert_eq!((quota.max_instances, quota.max_cores), (Some(10), Some(20)));

    for credentials in [app_credential("wrong"), password("wrong")] {
        match OpenStackProvider::new(emulator.config(credentials)).await {
            Err(ProviderError::Auth(_)) => {}
            Err(other) => panic!("bad credentials gave {other:?}"),
            Ok(_) => panic!("bad credentials were accepted"),
        }
    }
}

#[tokio::test]
async fn refusals_map_to_provider_error_kinds() {
    let emulator = Emulator::start();
    let provider = OpenStackProvider::new(emulator.config(password("canopy-secret"))).await.expect("connect");
    let faults = ControlFaults::new(&emulator.url);
    faults.post("faults/throttle", serde_json::json!({"count": 1})).await.expect("throttle fault");
    assert!(matches!(provider.limits().await, Err(ProviderError::Throttled { .. })));
    faults.post("faults/az_outage", serde_json::json!({"zone": "az-2"})).await.expect("outage fault");
    let fixture = fixture(&provider, &faults, "az-2", "m1.tiny");
    match provider.create(&fixture.request("in-outage", false)).await {
        Err(ProviderError::InsufficientCapacity { instance_type, zone, .. }) => {
            assert_eq!((instance_type.as_str(), zone.as_str()), ("m1.tiny", "az-2"))
        }
        other => panic!("create in a zone that is down gave {other:?}"),
    }
    let mut request = fixture.request("bad-tag", false);
    request.tags.insert("canopy/bad".into(), "x".into());
    assert!(matches!(provider.create(&request).await, Err(ProviderError::InvalidRequest(_))));
    let left = provider.list_ours(&fixture.cluster).await.expect("list");
    assert!(left.is_empty(), "refused creates left {left:?}");
}

/// Against a real cloud, when pointed there: the checks that need no injected fault.
#[tokio::test]
async fn real_openstack_when_configured() {
    let var = |name: &str| std::env::var(format!("CANOPY_OPENSTACK_CONFORMANCE_{name}")).ok();
    let Some(url) = var("URL") else {
        return; // Not configured: the fake-backed tests above cover the provider.
    };
    let credentials = Credentials::Password {
        username: var("USERNAME").unwrap_or_else(|| "admin".into()),
        user_domain: var("USER_DOMAIN").unwrap_or_else(|| "Default".into()),
        password: var("PASSWORD").expect("CANOPY_OPENSTACK_CONFORMANCE_PASSWORD"),
        project: var("PROJECT").unwrap_or_else(|| "admin".into()),
        project_domain: var("PROJECT_DOMAIN").unwrap_or_else(|| "Default".into()),
    };
    let region = var("REGION").unwrap_or_else(|| "RegionOne".into());
    let mut config =
        OpenStackConfig::new(&url, credentials, &region, &var("IMAGE").expect("CANOPY_OPENSTACK_CONFORMANCE_IMAGE"));
    config.network = var("NETWORK");
    let provider = OpenStackProvider::new(config).await.expect("connect to the real cloud");
    let faults = ControlFaults::new("");
    let mut f = fixture(
        &provider,
        &faults,
        &var("ZONE").unwrap_or_else(|| "nova".into()),
        &var("FLAVOR").unwrap_or_else(|| "m1.small".into()),
    );
    f.region = region;
    let failures = conformance::run_basic(&f).await;
    assert!(failures.is_empty(), "conformance failures against the real cloud:\n{}", failures.join("\n"));
}
