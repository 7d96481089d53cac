//! The provider conformance suite against EC2 as emulated by the local stack (moto with
//! Canopy's fault routes). Every check runs, and all failures are reported together.

use canopy_provider_aws::{AwsConfig, AwsProvider};
use canopy_providers::conformance::{self, Faults, Fixture};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// The emulator process, killed when the test ends however it ends.
struct Emulator {
    child: Child,
    url: String,
}

impl Emulator {
    fn start() -> Emulator {
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
        let install = Command::new(repo.join("localstack/moto/install.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("install.sh");
        assert!(install.status.success(), "installing moto failed");
        let python = String::from_utf8(install.stdout).expect("utf-8").trim().to_string();
        let mut child = Command::new(python)
            .arg(repo.join("localstack/moto/canopy_moto.py"))
            .args(["--host", "127.0.0.1", "--port", "0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let url = loop {
            let line = lines.next().expect("moto exited before it was ready").expect("read");
            if let Some(url) = line.strip_prefix("ready ") {
                break url.trim().to_string();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Emulator { child, url }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct MotoFaults {
    url: String,
}

impl MotoFaults {
    async fn post(&self, route: &str, body: serde_json::Value) -> Result<(), String> {
        let response = reqwest::Client::new()
            .post(format!("{}/_canopy/{route}", self.url))
            .json(&body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        response.error_for_status().map(|_| ()).map_err(|e| e.to_string())
    }
}

#[async_trait::async_trait]
impl Faults for MotoFaults {
    async fn interrupt(&self, provider_id: &str) -> Result<(), String> {
        self.post("faults/interrupt", serde_json::json!({"instance_id": provider_id})).await
    }

    async fn fail(&self, provider_id: &str) -> Result<(), String> {
        self.post("faults/fail", serde_json::json!({"instance_id": provider_id})).await
    }

    async fn exhaust_quota(&self) -> Result<(), String> {
        self.post("faults/quota", serde_json::json!({})).await
    }

    async fn exhaust_capacity(&self, instance_type: &str) -> Result<(), String> {
        self.post("faults/capacity", serde_json::json!({"instance_type": instance_type})).await
    }

    async fn slow_boot(&self, seconds: f64) -> Result<(), String> {
        self.post("faults/pending", serde_json::json!({"seconds": seconds})).await
    }

    async fn clear(&self) -> Result<(), String> {
        self.post("faults/clear", serde_json::json!({})).await
    }
}

#[tokio::test]
async fn aws_passes_the_provider_conformance_suite() {
    let emulator = Emulator::start();
    let provider = AwsProvider::new(AwsConfig {
        regions: vec!["us-east-1".into()],
        endpoint: Some(emulator.url.clone()),
        credentials: Some(("test".into(), "test".into())),
        image_id: "ami-0123456789abcdef0".into(),
    })
    .await;
    let faults = MotoFaults { url: emulator.url.clone() };
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
