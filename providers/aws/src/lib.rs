//! canopy-provider-aws: AWS EC2 through `aws-sdk-ec2`.
//!
//! Creation is idempotent twice over: a look-up by the `canopy:machine` tag before creating
//! (the local emulator ignores ClientToken) and the ClientToken itself (real AWS honours it).
//! Throttling is retried by the SDK's standard retry mode (exponential backoff with jitter);
//! what is left is classified into provider-neutral errors. Prices come from the shipped
//! catalog (`core/data/prices/aws.csv`): EC2 has no price API, and the Pricing API is another
//! service.

use async_trait::async_trait;
use aws_sdk_ec2::Client;
use aws_sdk_ec2::config::retry::RetryConfig;
use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{
    Filter, Instance, InstanceLifecycleType, InstanceMarketOptionsRequest, InstanceStateName, InstanceType, MarketType,
    Placement, ResourceType, Tag, TagSpecification,
};
use base64::Engine;
use canopy_core::schedule::{Catalog, Offering};
use canopy_providers::{
    CreateMachine, Interruption, MachineStatus, Provider, ProviderError, ProviderMachine, Result, TAG_CLUSTER,
    TAG_MACHINE,
};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use tokio::sync::OnceCell;

/// The shipped AWS price catalog (see core/data/README.md for its source and licence).
const PRICES: &str = include_str!("../../../core/data/prices/aws.csv");

#[derive(Clone, Debug)]
pub struct AwsConfig {
    /// Regions Canopy may buy in.
    pub regions: Vec<String>,
    /// An endpoint override (the local stack); `None` for real AWS.
    pub endpoint: Option<String>,
    /// Static credentials; `None` uses the standard chain (env, profile, instance role).
    pub credentials: Option<(String, String)>,
    /// The machine image to boot.
    pub image_id: String,
}

pub struct AwsProvider {
    clients: HashMap<String, Client>,
    config: AwsConfig,
    offerings: OnceCell<Vec<Offering>>,
}

impl AwsProvider {
    pub async fn new(config: AwsConfig) -> AwsProvider {
        let mut clients = HashMap::new();
        for region in &config.regions {
            let mut loader = aws_config::defaults(BehaviorVersion::latest())
                .region(Region::new(region.clone()))
                .retry_config(RetryConfig::standard().with_max_attempts(5));
            if let Some(endpoint) = &config.endpoint {
                loader = loader.endpoint_url(endpoint);
            }
            if let Some((key, secret)) = &config.credentials {
                loader = loader.credentials_provider(Credentials::new(key, secret, None, None, "canopy-config"));
            }
            clients.insert(region.clone(), Client::new(&loader.load().await));
        }
        AwsProvider { clients, config, offerings: OnceCell::new() }
    }

    fn client(&self, region: &str) -> Result<&Client> {
        self.clients
            .get(region)
            .ok_or_else(|| ProviderError::InvalidRequest(format!("region {region} is not configured")))
    }

    async fn load_offerings(&self) -> Result<Vec<Offering>> {
        let catalog = Catalog::from_csv(PRICES).map_err(|e| ProviderError::Other(format!("aws price catalog: {e}")))?;
        let mut offerings = Vec::new();
        for region in &self.config.regions {
            let zones = self
                .client(region)?
                .describe_availability_zones()
                .send()
                .await
                .map_err(classify)?
                .availability_zones
                .unwrap_or_default()
                .into_iter()
                .filter_map(|z| z.zone_name)
                .collect::<Vec<_>>();
            for offering in catalog.offerings.iter().filter(|o| &o.region == region) {
                offerings.push(Offering { zones: zones.clone(), ..offering.clone() });
            }
        }
        Ok(offerings)
    }

    /// Our live machine created with this idempotency key, if any.
    async fn find_by_key(&self, region: &str, key: &str) -> Result<Option<ProviderMachine>> {
        let response = self
            .client(region)?
            .describe_instances()
            .filters(filter(&format!("tag:{TAG_MACHINE}"), key))
            .filters(Filter::builder().name("instance-state-name").values("pending").values("running").build())
            .send()
            .await
            .map_err(classify)?;
        let mut found = instances(response.reservations.unwrap_or_default()).map(|i| machine(region, i));
        Ok(found.next())
    }
}

#[async_trait]
impl Provider for AwsProvider {
    fn name(&self) -> &str {
        "aws"
    }

    async fn offerings(&self) -> Result<Vec<Offering>> {
        self.offerings.get_or_try_init(|| self.load_offerings()).await.cloned()
    }

    #[tracing::instrument(skip_all, fields(key = %request.idempotency_key, instance_type = %request.instance_type, zone = %request.zone))]
    async fn create(&self, request: &CreateMachine) -> Result<ProviderMachine> {
        if let Some(existing) = self.find_by_key(&request.region, &request.idempotency_key).await? {
            tracing::info!(id = %existing.provider_id, "machine already exists for this key");
            return Ok(existing);
        }
        let mut tags = TagSpecification::builder().resource_type(ResourceType::Instance);
        tags = tags.tags(Tag::builder().key("Name").value(&request.name).build());
        for (key, value) in &request.tags {
            tags = tags.tags(Tag::builder().key(key).value(value).build());
        }
        let mut run = self
            .client(&request.region)?
            .run_instances()
            .image_id(&self.config.image_id)
            .instance_type(InstanceType::from(request.instance_type.as_str()))
            .min_count(1)
            .max_count(1)
            .user_data(base64::engine::general_purpose::STANDARD.encode(&request.user_data))
            .tag_specifications(tags.build())
            // Real AWS returns the same instance for a repeated token (max 64 characters).
            .client_token(request.idempotency_key.chars().take(64).collect::<String>());
        if !request.zone.is_empty() {
            run = run.placement(Placement::builder().availability_zone(&request.zone).build());
        }
        if request.spot {
            run = run
                .instance_market_options(InstanceMarketOptionsRequest::builder().market_type(MarketType::Spot).build());
        }
        let response = run.send().await.map_err(|e| {
            let error = classify(e);
            match error {
                ProviderError::InsufficientCapacity { message, .. } => ProviderError::InsufficientCapacity {
                    instance_type: request.instance_type.clone(),
                    zone: request.zone.clone(),
                    message,
                },
                other => other,
            }
        })?;
        let instance = response
            .instances
            .unwrap_or_default()
            .into_iter()
            .next()
            .ok_or_else(|| ProviderError::Other("RunInstances returned no instance".into()))?;
        let created = machine(&request.region, instance);
        tracing::info!(id = %created.provider_id, "machine created");
        Ok(created)
    }

    async fn describe(&self, region: &str, provider_id: &str) -> Result<ProviderMachine> {
        let response =
            self.client(region)?.describe_instances().instance_ids(provider_id).send().await.map_err(classify)?;
        instances(response.reservations.unwrap_or_default())
            .next()
            .map(|i| machine(region, i))
            .ok_or_else(|| ProviderError::NotFound(format!("instance {provider_id}")))
    }

    async fn list_ours(&self, cluster: &str) -> Result<Vec<ProviderMachine>> {
        let mut machines = Vec::new();
        for region in &self.config.regions {
            let mut pages = self
                .client(region)?
                .describe_instances()
                .filters(filter(&format!("tag:{TAG_CLUSTER}"), cluster))
                .into_paginator()
                .send();
            while let Some(page) = pages.next().await {
                let page = page.map_err(classify)?;
                machines.extend(instances(page.reservations.unwrap_or_default()).map(|i| machine(region, i)));
            }
        }
        Ok(machines)
    }

    async fn terminate(&self, region: &str, provider_id: &str) -> Result<()> {
        match self.client(region)?.terminate_instances().instance_ids(provider_id).send().await.map_err(classify) {
            Ok(_) | Err(ProviderError::NotFound(_)) => Ok(()),
            Err(other) => Err(other),
        }
    }
}

fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

fn instances(reservations: Vec<aws_sdk_ec2::types::Reservation>) -> impl Iterator<Item = Instance> {
    reservations.into_iter().flat_map(|r| r.instances.unwrap_or_default())
}

fn machine(region: &str, instance: Instance) -> ProviderMachine {
    let status = match instance.state.as_ref().and_then(|s| s.name.clone()) {
        Some(InstanceStateName::Pending) => MachineStatus::Pending,
        Some(InstanceStateName::Running) => MachineStatus::Running,
        Some(InstanceStateName::Stopping) => MachineStatus::Stopping,
        Some(InstanceStateName::Stopped) => MachineStatus::Stopped,
        Some(InstanceStateName::ShuttingDown) | Some(InstanceStateName::Terminated) => MachineStatus::Terminated,
        _ => MachineStatus::Pending,
    };
    let reason = instance.state_reason.as_ref().and_then(|r| r.code.clone()).unwrap_or_default();
    let interruption = if reason == "Server.SpotInstanceTermination" {
        Some(Interruption::SpotReclaimed)
    } else if status.is_gone() && reason.starts_with("Server.") {
        Some(Interruption::Failed(instance.state_reason.as_ref().and_then(|r| r.message.clone()).unwrap_or(reason)))
    } else {
        None
    };
    let tags: BTreeMap<String, String> = instance
        .tags
        .unwrap_or_default()
        .into_iter()
        .filter_map(|t| Some((t.key?, t.value.unwrap_or_default())))
        .collect();
    ProviderMachine {
        provider_id: instance.instance_id.unwrap_or_default(),
        region: region.to_string(),
        zone: instance.placement.and_then(|p| p.availability_zone).unwrap_or_default(),
        instance_type: instance.instance_type.map(|t| t.as_str().to_string()).unwrap_or_default(),
        status,
        spot: instance.instance_lifecycle == Some(InstanceLifecycleType::Spot),
        interruption,
        tags,
        private_ip: instance.private_ip_address,
    }
}

/// Maps an EC2 error to the kinds the provisioning controller acts on.
fn classify<E: ProvideErrorMetadata + std::fmt::Debug, R: std::fmt::Debug>(
    error: aws_sdk_ec2::error::SdkError<E, R>,
) -> ProviderError {
    let code = error.code().unwrap_or_default().to_string();
    let message = error.message().map(str::to_string).unwrap_or_else(|| format!("{error:?}"));
    match code.as_str() {
        "RequestLimitExceeded" | "Throttling" | "ThrottlingException" => {
            ProviderError::Throttled { retry_after: Duration::from_secs(5) }
        }
        "InsufficientInstanceCapacity" | "InsufficientHostCapacity" | "InsufficientReservedInstanceCapacity" => {
            ProviderError::InsufficientCapacity { instance_type: String::new(), zone: String::new(), message }
        }
        "InstanceLimitExceeded" | "VcpuLimitExceeded" | "MaxSpotInstanceCountExceeded" => {
            ProviderError::QuotaExceeded(message)
        }
        "AuthFailure" | "UnauthorizedOperation" | "InvalidClientTokenId" | "SignatureDoesNotMatch" => {
            ProviderError::Auth(message)
        }
        "InvalidInstanceID.NotFound" | "InvalidInstanceID.Malformed" => ProviderError::NotFound(message),
        code if code.starts_with("Invalid") || code.starts_with("Missing") || code == "Unsupported" => {
            ProviderError::InvalidRequest(format!("{code}: {message}"))
        }
        "" => ProviderError::Other(message),
        code => ProviderError::Other(format!("{code}: {message}")),
    }
}
