//! Machines: joining, heartbeats (which also carry task reports), listing and liveness.

use super::{Result, Store, StoreError, record};
use crate::auth;
use canopy_core::Resources;
use canopy_core::wire::{HeartbeatRequest, HeartbeatResponse, JoinRequest, JoinResponse, PROTOCOL_VERSION};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct MachineRow {
    pub id: Uuid,
    pub name: String,
    pub provider: String,
    pub address: String,
    pub state: String,
    pub capacity_milli_cpu: i64,
    pub capacity_memory: i64,
    pub allocated_milli_cpu: i64,
    pub allocated_memory: i64,
    pub tasks: i64,
    pub cgroup_version: i16,
    pub labels: serde_json::Value,
    pub region: String,
    pub zone: String,
    pub offering: String,
    pub spot: bool,
    /// Hourly price in micro-dollars (0 for machines joined by hand).
    pub price_micros: i64,
    pub provider_id: Option<String>,
    pub state_reason: String,
    pub last_heartbeat: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

/// What a machine's tasks use (see [`Store::machines_usage`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct MachineUsage {
    pub machine_id: Uuid,
    pub memory_bytes: i64,
    pub cpu_usec: i64,
    pub window_seconds: i64,
}

impl Store {
    /// Spends a join token and registers the machine, returning its agent credential.
    pub async fn join(&self, request: &JoinRequest) -> Result<JoinResponse> {
        if request.protocol != PROTOCOL_VERSION {
            return Err(StoreError::Invalid(format!(
                "protocol: agent speaks version {}, this control service speaks {PROTOCOL_VERSION}",
                request.protocol
            )));
        }
        canopy_core::spec::validate_name("name", &request.name).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let mut tx = self.begin().await?;
        let spent = sqlx::query_scalar::<_, String>(
            "UPDATE join_tokens SET used_at = now() WHERE digest = $1 AND used_at IS NULL AND expires_at > now() RETURNING digest",
        )
        .bind(auth::digest(&request.join_token))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(join_digest) = spent else {
            return Err(StoreError::Unauthorized("join token is unknown, expired or already used".into()));
        };
        let agent_token = auth::new_secret("cna")?;
        let control_key = auth::new_secret("cnk")?;
        let labels = serde_json::to_value(&request.labels).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let cpu = to_i64(request.capacity.milli_cpu, "capacity.milli_cpu")?;
        let memory = to_i64(request.capacity.memory_bytes, "capacity.memory_bytes")?;
        // A token minted for a machine Canopy bought joins that machine; any other token joins a
        // new (hand-added) machine.
        let linked: Option<Uuid> = sqlx::query_scalar("SELECT machine_id FROM join_tokens WHERE digest = $1")
            .bind(&join_digest)
            .fetch_one(&mut *tx)
            .await?;
        let machine_id = match linked {
            Some(machine_id) => machine_id,
            None => {
                // A hand-added machine: its row starts as if it had been waiting for its agent,
                // and the one update below fills it in for both kinds.
                let machine_id = Uuid::new_v4();
                let provider = request.labels.get("provider").cloned().unwrap_or_else(|| "baremetal".to_string());
                sqlx::query(
                    "INSERT INTO machines (id, name, provider, address, agent_endpoint, control_key, capacity_milli_cpu,
                                           capacity_memory, cgroup_version, state)
                     VALUES ($1, $2, $3, '', '', '', 0, 0, 0, 'booting')",
                )
                .bind(machine_id)
                .bind(&request.name)
                .bind(&provider)
                .execute(&mut *tx)
                .await?;
                machine_id
            }
        };
        let provider: String = sqlx::query_scalar(
            "UPDATE machines SET address = $2, agent_endpoint = $3, control_key = $4, capacity_milli_cpu = $5,
                    capacity_memory = $6, cgroup_version = $7, labels = $8, state = 'ready', last_heartbeat = now(),
                    boot_deadline = NULL, idle_since = now()
             WHERE id = $1 AND state IN ('requested', 'booting') RETURNING provider",
        )
        .bind(machine_id)
        .bind(&request.address)
        .bind(&request.agent_endpoint)
        .bind(&control_key)
        .bind(cpu)
        .bind(memory)
        .bind(i16::from(request.cgroup_version))
        .bind(&labels)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::Unauthorized(format!("machine {machine_id} is no longer waiting for its agent")))?;
        sqlx::query("UPDATE join_tokens SET machine_id = $1 WHERE digest = $2")
            .bind(machine_id)
            .bind(&join_digest)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO tokens (id, digest, name, role, machine_id) VALUES ($1, $2, $3, 'agent', $4)")
            .bind(Uuid::new_v4())
            .bind(auth::digest(&agent_token))
            .bind(format!("agent-{}", request.name))
            .bind(machine_id)
            .execute(&mut *tx)
            .await?;
        let detail =
            serde_json::json!({"provider": provider, "address": request.address, "capacity": request.capacity});
        record(&mut tx, &format!("agent:{}", request.name), "machine.joined", &request.name, None, detail).await?;
        tx.commit().await?;
        Ok(JoinResponse { machine_id, agent_token, control_key })
    }

    /// Records a heartbeat and the task reports it carries, and answers with the machine's
    /// desired tasks. A machine that was declared lost comes back as ready; the tasks it lost
    /// are not in its desired set any more, so its agent stops them.
    pub async fn heartbeat(
        &self,
        machine_id: Uuid,
        request: &HeartbeatRequest,
        interval_ms: u64,
    ) -> Result<HeartbeatResponse> {
        if request.protocol != PROTOCOL_VERSION {
            return Err(StoreError::Invalid(format!("protocol: version {} is not spoken here", request.protocol)));
        }
        let mut tx = self.begin().await?;
        let previous: Option<String> = sqlx::query_scalar(
            "UPDATE machines m SET last_heartbeat = now(), agent_endpoint = $2,
                    state = CASE WHEN old.state IN ('lost', 'booting') THEN 'ready' ELSE old.state END
             FROM (SELECT id, state FROM machines WHERE id = $1 FOR UPDATE) old
             WHERE m.id = old.id RETURNING old.state",
        )
        .bind(machine_id)
        .bind(&request.agent_endpoint)
        .fetch_optional(&mut *tx)
        .await?;
        match previous.as_deref() {
            None => return Err(StoreError::NotFound(format!("machine {machine_id} does not exist"))),
            Some("lost") => {
                record(&mut tx, "system", "machine.returned", &machine_id.to_string(), None, serde_json::json!({}))
                    .await?;
            }
            Some(_) => {}
        }
        Self::apply_reports(&mut tx, machine_id, &request.tasks).await?;
        let desired = Self::desired_tasks(&mut tx, machine_id).await?;
        tx.commit().await?;
        Ok(HeartbeatResponse { desired, heartbeat_interval_ms: interval_ms })
    }

    /// Live machines joined by hand (not provisioned by Canopy), per provider.
    pub async fn hand_joined_machines(&self) -> Result<Vec<(String, u32)>> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT provider, count(*) FROM machines
             WHERE NOT provisioned AND state IN ('requested', 'booting', 'ready') GROUP BY provider",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(provider, n)| (provider, u32::try_from(n).unwrap_or(u32::MAX))).collect())
    }

    pub async fn machines(&self) -> Result<Vec<MachineRow>> {
        Ok(sqlx::query_as::<_, MachineRow>(
            "SELECT m.id, m.name, m.provider, m.address, m.state, m.capacity_milli_cpu, m.capacity_memory,
                    COALESCE(SUM(t.milli_cpu), 0)::bigint AS allocated_milli_cpu,
                    COALESCE(SUM(t.memory), 0)::bigint AS allocated_memory,
                    COUNT(t.id) AS tasks, m.cgroup_version, m.labels, m.region, m.zone, m.offering, m.spot,
                    m.price_micros, m.provider_id, m.state_reason, m.last_heartbeat, m.created_at
             FROM machines m LEFT JOIN tasks t ON t.machine_id = m.id AND t.state IN ('assigned', 'running')
             WHERE m.state <> 'terminated' OR m.terminated_at > now() - interval '1 hour'
             GROUP BY m.id ORDER BY m.created_at, m.name",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// What the tasks on each live machine use: memory now (from their last reports), and cpu
    /// time over the current and the previous clock hour (from the metering rows), with the
    /// seconds of that window the machine existed.
    pub async fn machines_usage(&self) -> Result<Vec<MachineUsage>> {
        Ok(sqlx::query_as::<_, MachineUsage>(
            "SELECT m.id AS machine_id,
                    COALESCE((SELECT SUM(t.memory_bytes) FROM tasks t
                              WHERE t.machine_id = m.id AND t.state = 'running'), 0)::bigint AS memory_bytes,
                    COALESCE((SELECT SUM(u.cpu_usec) FROM task_usage_hours u JOIN tasks t ON t.id = u.task_id
                              WHERE t.machine_id = m.id AND u.hour >= date_trunc('hour', now()) - interval '1 hour'),
                             0)::bigint AS cpu_usec,
                    GREATEST(EXTRACT(EPOCH FROM now() - GREATEST(date_trunc('hour', now()) - interval '1 hour',
                                                               m.created_at)), 0)::bigint AS window_seconds
             FROM machines m WHERE m.state NOT IN ('terminated', 'failed')",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// One step of the liveness controller: machines silent for longer than `ttl` are lost,
    /// and so are their active tasks (replacements are created by the app controller).
    /// Returns the machines declared lost in this step.
    pub async fn mark_lost_machines(&self, ttl: std::time::Duration) -> Result<Vec<String>> {
        let Some(mut tx) = self.begin_leader().await? else { return Ok(Vec::new()) };
        let lost: Vec<(Uuid, String)> = sqlx::query_as(
            "UPDATE machines SET state = 'lost'
             WHERE state IN ('ready', 'draining') AND last_heartbeat < now() - make_interval(secs => $1)
             RETURNING id, name",
        )
        .bind(ttl.as_secs_f64())
        .fetch_all(&mut *tx)
        .await?;
        for (id, name) in &lost {
            let tasks: i64 = sqlx::query_scalar(
                "WITH lost AS (
                    UPDATE tasks SET state = 'lost', finished_at = now(), message = 'machine lost'
                    WHERE machine_id = $1 AND state IN ('assigned', 'running') RETURNING 1)
                 SELECT COUNT(*) FROM lost",
            )
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
            record(&mut tx, "system", "machine.lost", name, None, serde_json::json!({"tasks_lost": tasks})).await?;
        }
        tx.commit().await?;
        Ok(lost.into_iter().map(|(_, name)| name).collect())
    }

    /// The resources of ready machines and what is already allocated on them (machines of an
    /// evacuated provider are left out).
    pub(super) async fn ready_machines(
        tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    ) -> Result<Vec<canopy_core::schedule::MachineView>> {
        let rows = sqlx::query_as::<_, SnapshotMachine>(
            "SELECT id, state, provider, region, zone, offering, spot, price_micros, sunk, capacity_milli_cpu,
                    capacity_memory, labels
             FROM machines WHERE state IN ('requested', 'booting', 'ready')
               -- An evacuating or evacuated provider takes no new work.
               AND provider NOT IN (SELECT provider FROM evacuations WHERE state IN ('running', 'completed'))
             ORDER BY id FOR UPDATE",
        )
        .fetch_all(&mut **tx)
        .await?;
        let placed: Vec<(Uuid, String, i64, i64)> = sqlx::query_as(
            "SELECT machine_id, app_id::text, milli_cpu, memory FROM tasks
             WHERE state IN ('assigned', 'running') AND machine_id IS NOT NULL",
        )
        .fetch_all(&mut **tx)
        .await?;
        let mut machines: Vec<canopy_core::schedule::MachineView> = rows
            .into_iter()
            .map(|m| canopy_core::schedule::MachineView {
                id: m.id,
                capacity: Resources::new(m.capacity_milli_cpu.max(0) as u64, m.capacity_memory.max(0) as u64),
                labels: serde_json::from_value(m.labels).unwrap_or_default(),
                provider: m.provider,
                region: m.region,
                zone: m.zone,
                offering: m.offering,
                spot: m.spot,
                price: m.price_micros.max(0) as u64,
                sunk: m.sunk,
                state: if m.state == "ready" {
                    canopy_core::schedule::MachineState::Ready
                } else {
                    canopy_core::schedule::MachineState::Provisioning
                },
                ..Default::default()
            })
            .collect();
        let index: std::collections::HashMap<Uuid, usize> =
            machines.iter().enumerate().map(|(i, m)| (m.id, i)).collect();
        for (machine_id, app, cpu, memory) in placed {
            if let Some(machine) = index.get(&machine_id).map(|&i| &mut machines[i]) {
                machine.allocated += Resources::new(cpu.max(0) as u64, memory.max(0) as u64);
                *machine.group_counts.entry(app).or_default() += 1;
            }
        }
        Ok(machines)
    }
}

#[derive(sqlx::FromRow)]
struct SnapshotMachine {
    id: Uuid,
    state: String,
    provider: String,
    region: String,
    zone: String,
    offering: String,
    spot: bool,
    price_micros: i64,
    sunk: bool,
    capacity_milli_cpu: i64,
    capacity_memory: i64,
    labels: serde_json::Value,
}

pub(super) fn to_i64(value: u64, field: &str) -> Result<i64> {
    i64::try_from(value).map_err(|_| StoreError::Invalid(format!("{field}: {value} is too large")))
}
