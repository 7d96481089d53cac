//! The provider conformance suite against Azure as emulated by the local stack's ARM fake
//! (localstack/azure/canopy_azure.py, Python standard library only), plus the credential and
//! price-book checks that are Azure's own.

use canopy_provider_azure::{AzureConfig, AzureEndpoints, AzureProvider, ImageReference};
use canopy_providers::conformance::{self, ControlFaults, Fixture};
use canopy_providers::{Provider, ProviderError};
use std::path::PathBuf;

/// The fake, killed when the test ends however it ends.
struct Emulator {
    _process: conformance::Emulator,
    /// Plain HTTP, for the control API.
    url: String,
    /// The same port over TLS, for the provider (azure_identity insists on https).
    tls_url: String,
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

impl Emulator {
    fn start() -> Emulator {
        let process = conformance::Emulator::start(&repo(), None, "localstack/azure/canopy_azure.py", &[])
            .expect("start the Azure fake (python3)");
        let url = process.url.clone();
        let port = url.rsplit(':').next().expect("port");
        Emulator { tls_url: format!("https://localhost:{port}"), url, _process: process }
    }

    fn config(&self, client_secret: &str) -> AzureConfig {
        AzureConfig {
            tenant_id: "00000000-0000-0000-0000-000000000001".into(),
            client_id: "canopy-conformance".into(),
            client_secret: client_secret.into(),
            subscription_id: "00000000-0000-0000-0000-00000000c0de".into(),
            resource_group: format!("canopy-{}", uuid::Uuid::new_v4()),
            regions: vec!["eastus".into()],
            image: ImageReference::parse_urn("Canonical:ubuntu-24_04-lts:server:latest").expect("urn"),
            subnet_id: "/subscriptions/00000000-0000-0000-0000-00000000c0de/resourceGroups/net/providers/Microsoft.Network/virtualNetworks/canopy/subnets/machines".into(),
            admin_username: "canopy".into(),
            ssh_public_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIConformanceOnly canopy".into(),
            endpoints: AzureEndpoints::local(&self.tls_url),
            extra_root_certificate_pem: Some(
                std::fs::read_to_string(repo().join("localstack/azure/tls/ca.pem")).expect("the fake's CA"),
            ),
        }
    }
}

#[tokio::test]
async fn azure_passes_the_provider_conformance_suite() {
    let emulator = Emulator::start();
    let provider = AzureProvider::new(emulator.config("canopy-local-secret")).await.expect("provider");
    let faults = ControlFaults::new(&emulator.url);
    let fixture = Fixture {
        provider: &provider,
        faults: &faults,
        region: "eastus".into(),
        zone: "1".into(),
        instance_type: "Standard_D2s_v5".into(),
        cluster: format!("conformance-{}", uuid::Uuid::new_v4()),
        spot: true,
        quota: true,
    };
    let failures = conformance::run_all(&fixture).await;
    assert!(failures.is_empty(), "conformance failures:\n{}", failures.join("\n"));
}

#[tokio::test]
async fn a_wrong_client_secret_is_an_auth_error() {
    let emulator = Emulator::start();
    match AzureProvider::new(emulator.config("not-the-secret")).await {
        Err(ProviderError::Auth(message)) => assert!(!message.contains("not-the-secret"), "{message}"),
        other => panic!("a wrong secret gave {other:?}"),
    }
}

#[tokio::test]
async fn offerings_carry_the_catalog_prices() {
    let emulator = Emulator::start();
    let provider = AzureProvider::new(emulator.config("canopy-local-secret")).await.expect("provider");
    let offerings = provider.offerings().await.expect("offerings");
    // core/data/prices/azure.csv: azure,eastus,Standard_D2s_v5,2,8,0,amd64,0.096,0.020266
    let d2s = offerings
        .iter()
        .find(|o| o.instance_type == "Standard_D2s_v5" && o.region == "eastus")
        .expect("Standard_D2s_v5 in eastus");
    assert_eq!(d2s.provider, "azure");
    assert_eq!(d2s.price_on_demand, 96_000);
    assert_eq!(d2s.price_spot, Some(20_266));
    assert_eq!(d2s.capacity.milli_cpu, 2000);
    assert_eq!(d2s.capacity.memory_bytes, 8 << 30);
    assert_eq!(d2s.zones, vec!["1", "2", "3"]);
    // A size without a spot price in the catalog has none here either.
    let b1s = offerings.iter().find(|o| o.instance_type == "Standard_B1s").expect("Standard_B1s");
    assert_eq!((b1s.price_on_demand, b1s.price_spot), (10_400, None));
}

#[tokio::test]
async fn throttling_carries_arms_retry_after() {
    let emulator = Emulator::start();
    let provider = AzureProvider::new(emulator.config("canopy-local-secret")).await.expect("provider");
    let faults = ControlFaults::new(&emulator.url);
    faults.post("faults/throttle", serde_json::json!({"count": 1, "retry_after": 7})).await.expect("throttle");
    let throttled = provider.describe("eastus", "anything").await;
    assert_eq!(throttled, Err(ProviderError::Throttled { retry_after: std::time::Duration::from_secs(7) }));
    assert!(matches!(provider.describe("eastus", "anything").await, Err(ProviderError::NotFound(_))));
}
