//! The provider conformance suite against EC2 as emulated by the local stack (moto with
//! Canopy's fault routes). Every check runs, and all failures are reported together.

use canopy_provider_aws::{AwsConfig, AwsProvider};
use canopy_providers::conformance::{self, ControlFaults, Emulator, Fixture};
use std::path::PathBuf;

#[tokio::test]
async fn aws_passes_the_provider_conformance_suite() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let emulator = Emulator::start(&repo, Some("localstack/moto/install.sh"), "localstack/moto/canopy_moto.py", &[])
        .expect("start moto");
    let provider = AwsProvider::new(AwsConfig {
        regions: vec!["us-east-1".into()],
        endpoint: Some(emulator.url.clone()),
        credentials: Some(("test".into(), "test".into())),
        image_id: "ami-0123456789abcdef0".into(),
    })
    .await;
    let faults = ControlFaults::new(&emulator.url);
    let fixture = Fixture {
        provider: &provider,
        faults: &faults,
        region: "us-east-1".into(),
        zone: "us-east-1b".into(),
        instance_type: "t3.micro".into(),
        cluster: format!("conformance-{}", uuid::Uuid::new_v4()),
        spot: true,
        quota: true,
    };
    let failures = conformance::run_all(&fixture).await;
    assert!(failures.is_empty(), "conformance failures:\n{}", failures.join("\n"));
}
