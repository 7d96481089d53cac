//! `canopy serve`'s provider settings: which clouds Canopy may buy from, and how to reach
//! them. Credentials come from each cloud's usual variables (`AWS_*`, `AZURE_*`, `OS_*`);
//! Canopy's own choices from `CANOPY_<PROVIDER>_*`. Bare metal is always on: its hosts are
//! the ones registered with `canopy hosts add`.

use crate::store::{HostInventory, Store};
use anyhow::{Context, Result, bail};
use canopy_provider_azure::{AzureConfig, AzureEndpoints, AzureProvider, ImageReference};
use canopy_provider_baremetal::BareMetalProvider;
use canopy_provider_openstack::{Credentials, OpenStackConfig, OpenStackProvider};
use canopy_providers::Provider;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(clap::Args, Debug)]
pub struct ProviderArgs {
    /// Buy machines on AWS EC2 in these regions (comma-separated); off when empty.
    #[arg(long, env = "CANOPY_AWS_REGIONS", value_delimiter = ',')]
    aws_regions: Vec<String>,
    /// EC2 endpoint override (the local stack); credentials come from the usual AWS sources.
    #[arg(long, env = "CANOPY_AWS_ENDPOINT")]
    aws_endpoint: Option<String>,
    /// Machine image new EC2 machines boot (it must carry canopy-agent and cloud-init).
    #[arg(long, env = "CANOPY_AWS_IMAGE", default_value = "ami-0123456789abcdef0")]
    aws_image: String,

    /// Buy Azure VMs in these regions (comma-separated); off when empty. The service
    /// principal comes from AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET.
    #[arg(long, env = "CANOPY_AZURE_REGIONS", value_delimiter = ',')]
    azure_regions: Vec<String>,
    #[arg(long, env = "AZURE_TENANT_ID", default_value = "")]
    azure_tenant_id: String,
    #[arg(long, env = "AZURE_CLIENT_ID", default_value = "")]
    azure_client_id: String,
    #[arg(long, env = "AZURE_CLIENT_SECRET", default_value = "", hide_env_values = true, hide_default_value = true)]
    azure_client_secret: String,
    #[arg(long, env = "AZURE_SUBSCRIPTION_ID", default_value = "")]
    azure_subscription_id: String,
    /// Resource group Canopy's VMs live in (created when missing).
    #[arg(long, env = "CANOPY_AZURE_RESOURCE_GROUP", default_value = "canopy")]
    azure_resource_group: String,
    /// Image URN (publisher:offer:sku:version); it must carry canopy-agent and cloud-init.
    #[arg(long, env = "CANOPY_AZURE_IMAGE", default_value = "Canonical:ubuntu-24_04-lts:server:latest")]
    azure_image: String,
    /// Subnet the VMs' network interfaces join (/subscriptions/.../subnets/...).
    #[arg(long, env = "CANOPY_AZURE_SUBNET_ID", default_value = "")]
    azure_subnet_id: String,
    #[arg(long, env = "CANOPY_AZURE_ADMIN_USERNAME", default_value = "canopy")]
    azure_admin_username: String,
    #[arg(long, env = "CANOPY_AZURE_SSH_PUBLIC_KEY", default_value = "")]
    azure_ssh_public_key: String,
    /// One URL standing in for ARM, the token authority and the Retail Prices API (the local
    /// stack); the public cloud when unset.
    #[arg(long, env = "CANOPY_AZURE_ENDPOINT")]
    azure_endpoint: Option<String>,
    /// An extra CA certificate (PEM file) to trust for Azure's endpoints (the local stack).
    #[arg(long, env = "CANOPY_AZURE_CA_CERT")]
    azure_ca_cert: Option<PathBuf>,

    /// Keystone v3 URL; OpenStack is off when unset. Credentials come from OS_USERNAME,
    /// OS_PASSWORD, OS_PROJECT_NAME (+ domains) or OS_APPLICATION_CREDENTIAL_ID / _SECRET.
    #[arg(long, env = "OS_AUTH_URL")]
    openstack_auth_url: Option<String>,
    #[arg(long, env = "OS_REGION_NAME", default_value = "RegionOne")]
    openstack_region: String,
    #[arg(long, env = "OS_USERNAME", default_value = "")]
    openstack_username: String,
    #[arg(long, env = "OS_PASSWORD", default_value = "", hide_env_values = true, hide_default_value = true)]
    openstack_password: String,
    #[arg(long, env = "OS_PROJECT_NAME", default_value = "")]
    openstack_project: String,
    #[arg(long, env = "OS_USER_DOMAIN_NAME", default_value = "Default")]
    openstack_user_domain: String,
    #[arg(long, env = "OS_PROJECT_DOMAIN_NAME", default_value = "Default")]
    openstack_project_domain: String,
    #[arg(long, env = "OS_APPLICATION_CREDENTIAL_ID", default_value = "")]
    openstack_application_credential_id: String,
    #[arg(
        long,
        env = "OS_APPLICATION_CREDENTIAL_SECRET",
        default_value = "",
        hide_env_values = true,
        hide_default_value = true
    )]
    openstack_application_credential_secret: String,
    /// Image servers boot (it must carry canopy-agent and cloud-init).
    #[arg(long, env = "CANOPY_OPENSTACK_IMAGE", default_value = "canopy-agent")]
    openstack_image: String,
    /// Network servers attach to; Nova picks (`auto`) when unset.
    #[arg(long, env = "CANOPY_OPENSTACK_NETWORK")]
    openstack_network: Option<String>,
}

impl ProviderArgs {
    /// Connects to every configured provider; a provider that is configured but cannot be
    /// reached or refuses the credentials stops the service with the reason.
    pub async fn connect(&self, store: &Store) -> Result<Vec<Arc<dyn Provider>>> {
        let mut providers: Vec<Arc<dyn Provider>> = Vec::new();
        if !self.aws_regions.is_empty() {
            let aws = canopy_provider_aws::AwsProvider::new(canopy_provider_aws::AwsConfig {
                regions: self.aws_regions.clone(),
                endpoint: self.aws_endpoint.clone(),
                credentials: None,
                image_id: self.aws_image.clone(),
            })
            .await;
            providers.push(Arc::new(aws));
        }
        if !self.azure_regions.is_empty() {
            providers.push(Arc::new(self.azure().await?));
        }
        if let Some(auth_url) = &self.openstack_auth_url {
            providers.push(Arc::new(self.openstack(auth_url).await?));
        }
        providers.push(Arc::new(BareMetalProvider::new(Arc::new(HostInventory::new(store.clone())))));
        Ok(providers)
    }

    async fn azure(&self) -> Result<AzureProvider> {
        for (value, variable) in [
            (&self.azure_tenant_id, "AZURE_TENANT_ID"),
            (&self.azure_client_id, "AZURE_CLIENT_ID"),
            (&self.azure_client_secret, "AZURE_CLIENT_SECRET"),
            (&self.azure_subscription_id, "AZURE_SUBSCRIPTION_ID"),
            (&self.azure_subnet_id, "CANOPY_AZURE_SUBNET_ID"),
            (&self.azure_ssh_public_key, "CANOPY_AZURE_SSH_PUBLIC_KEY"),
        ] {
            if value.is_empty() {
                bail!("CANOPY_AZURE_REGIONS is set, so {variable} is needed too");
            }
        }
        let extra_root_certificate_pem = match &self.azure_ca_cert {
            Some(path) => Some(
                std::fs::read_to_string(path).with_context(|| format!("CANOPY_AZURE_CA_CERT {}", path.display()))?,
            ),
            None => None,
        };
        let config = AzureConfig {
            tenant_id: self.azure_tenant_id.clone(),
            client_id: self.azure_client_id.clone(),
            client_secret: self.azure_client_secret.clone(),
            subscription_id: self.azure_subscription_id.clone(),
            resource_group: self.azure_resource_group.clone(),
            regions: self.azure_regions.clone(),
            image: ImageReference::parse_urn(&self.azure_image).context("CANOPY_AZURE_IMAGE")?,
            subnet_id: self.azure_subnet_id.clone(),
            admin_username: self.azure_admin_username.clone(),
            ssh_public_key: self.azure_ssh_public_key.clone(),
            endpoints: self.azure_endpoint.as_deref().map_or_else(AzureEndpoints::public_cloud, AzureEndpoints::local),
            extra_root_certificate_pem,
        };
        AzureProvider::new(config).await.context("connecting to Azure")
    }

    async fn openstack(&self, auth_url: &str) -> Result<OpenStackProvider> {
        let credentials = if !self.openstack_application_credential_id.is_empty() {
            Credentials::ApplicationCredential {
                id: self.openstack_application_credential_id.clone(),
                secret: self.openstack_application_credential_secret.clone(),
            }
        } else if !self.openstack_username.is_empty() && !self.openstack_project.is_empty() {
            Credentials::Password {
                username: self.openstack_username.clone(),
                user_domain: self.openstack_user_domain.clone(),
                password: self.openstack_password.clone(),
                project: self.openstack_project.clone(),
                project_domain: self.openstack_project_domain.clone(),
            }
        } else {
            bail!(
                "OS_AUTH_URL is set, so OpenStack needs OS_APPLICATION_CREDENTIAL_ID and _SECRET, or OS_USERNAME, \
                 OS_PASSWORD and OS_PROJECT_NAME"
            );
        };
        let mut config = OpenStackConfig::new(auth_url, credentials, &self.openstack_region, &self.openstack_image);
        config.network = self.openstack_network.clone();
        OpenStackProvider::new(config).await.context("connecting to OpenStack")
    }
}
