//! API tokens: generation, digests, roles, and who a request comes from.
//!
//! Tokens are 256-bit random secrets shown once; only their SHA-256 digest is stored, so a
//! database leak does not leak credentials. A fast digest is enough because the secrets are
//! random, not passwords.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Runs the organisation: teams, tokens, join tokens, every team's apps.
    Admin,
    /// Deploys and changes its own team's apps.
    Developer,
    /// Reads everything of its team, changes nothing.
    Finance,
    /// A machine's agent: only the agent protocol.
    Agent,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Developer => "developer",
            Role::Finance => "finance",
            Role::Agent => "agent",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        [Role::Admin, Role::Developer, Role::Finance, Role::Agent].into_iter().find(|r| r.as_str() == text)
    }
}

/// The authenticated identity behind a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub token_id: Uuid,
    pub name: String,
    pub role: Role,
    pub team_id: Option<Uuid>,
    pub machine_id: Option<Uuid>,
}

impl Caller {
    /// How the caller appears in the audit log.
    pub fn actor(&self) -> String {
        format!("{}:{}", self.role.as_str(), self.name)
    }

    /// Which teams' workloads this caller may see.
    pub fn scope(&self) -> Scope {
        match (self.role, self.team_id) {
            (Role::Admin, _) => Scope::All,
            (_, Some(team)) => Scope::Team(team),
            (_, None) => Scope::Nothing,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    All,
    Team(Uuid),
    Nothing,
}

impl Scope {
    /// The team filter for SQL: `None` means every team.
    pub fn team_filter(self) -> Option<Uuid> {
        match self {
            Scope::All => None,
            Scope::Team(team) => Some(team),
            Scope::Nothing => Some(Uuid::nil()),
        }
    }
}

/// A new random secret with a recognisable prefix (so leaked tokens can be found by scanners).
pub fn new_secret(prefix: &str) -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(format!("{prefix}_{}", hex::encode(bytes)))
}

pub fn digest(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_unique_and_digests_stable() {
        let a = new_secret("cnp").expect("random");
        let b = new_secret("cnp").expect("random");
        assert_ne!(a, b);
        assert!(a.starts_with("cnp_") && a.len() == 68);
        assert_eq!(digest(&a), digest(&a));
        assert_ne!(digest(&a), digest(&b));
    }

    #[test]
    fn finance_and_developers_see_only_their_team() {
        let team = Uuid::from_u128(9);
        let caller =
            |role| Caller { token_id: Uuid::nil(), name: "x".into(), role, team_id: Some(team), machine_id: None };
        assert_eq!(caller(Role::Finance).scope(), Scope::Team(team));
        assert_eq!(caller(Role::Developer).scope(), Scope::Team(team));
        assert_eq!(caller(Role::Admin).scope(), Scope::All);
    }
}
