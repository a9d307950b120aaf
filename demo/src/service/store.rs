//! Where processed payments are persisted: shared by every instance.
//!
//! With Redis, one sorted set per processor (`rinha:payments:default` / `:fallback`), scored
//! by `requestedAt` in milliseconds, members `{correlationId}:{cents}`; `ZADD NX` keeps a
//! payment once however often it is written, and one Lua script sums a window of both sets on
//! the server. In memory (the single-process `local` backend), the same in a `BTreeMap`.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;

use crate::service::ProcessorName;
use crate::timestamp::Window;

/// A payment a processor accepted.
#[derive(Clone, Debug)]
pub struct Processed {
    /// The payment's id.
    pub correlation_id: uuid::Uuid,
    /// Its amount in cents.
    pub amount_cents: i64,
    /// The `requestedAt` the processor holds, in Unix milliseconds.
    pub requested_at_ms: i64,
    /// The processor that accepted it.
    pub processor: ProcessorName,
}

/// Count and cents of one processor's payments in a window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreTotals {
    /// Number of payments.
    pub count: u64,
    /// Sum of amounts in cents.
    pub cents: i64,
}

/// The shared payment store.
pub enum Store {
    /// A Redis server every instance uses.
    Redis(redis::aio::ConnectionManager),
    /// In-process: one instance only.
    Memory(Mutex<MemoryStore>),
}

#[derive(Default)]
#[doc(hidden)]
pub struct MemoryStore {
    ids: HashSet<uuid::Uuid>,
    by_time: [BTreeMap<i64, Vec<i64>>; 2],
}

const SUM_SCRIPT: &str = r"
local out = {}
for i, key in ipairs(KEYS) do
  local members = redis.call('ZRANGEBYSCORE', key, ARGV[1], ARGV[2])
  local cents = 0
  for _, m in ipairs(members) do
    cents = cents + tonumber(string.sub(m, string.find(m, ':', 1, true) + 1))
  end
  out[2 * i - 1] = #members
  out[2 * i] = cents
end
return out
";

fn key(processor: ProcessorName) -> &'static str {
    match processor {
        ProcessorName::Default => "rinha:payments:default",
        ProcessorName::Fallback => "rinha:payments:fallback",
    }
}

impl Store {
    /// Connects to Redis at `url`.
    ///
    /// # Errors
    ///
    /// A message naming the URL when Redis cannot be reached.
    pub async fn redis(url: &str) -> Result<Store, String> {
        let client =
            redis::Client::open(url).map_err(|e| format!("invalid Redis URL {url:?}: {e}"))?;
        let manager = redis::aio::ConnectionManager::new(client)
            .await
            .map_err(|e| format!("cannot connect to Redis at {url}: {e}"))?;
        Ok(Store::Redis(manager))
    }

    /// An in-process store.
    pub fn memory() -> Store {
        Store::Memory(Mutex::new(MemoryStore::default()))
    }

    /// Persists a batch (payments already stored are left as they are).
    ///
    /// # Errors
    ///
    /// The Redis error; nothing can be assumed written then (the caller retries: writes are
    /// idempotent).
    pub async fn persist(&self, batch: &[Processed]) -> Result<(), String> {
        if batch.is_empty() {
            return Ok(());
        }
        match self {
            Store::Redis(manager) => {
                let mut pipe = redis::pipe();
                for p in batch {
                    pipe.cmd("ZADD")
                        .arg(key(p.processor))
                        .arg("NX")
                        .arg(p.requested_at_ms)
                        .arg(format!("{}:{}", p.correlation_id, p.amount_cents))
                        .ignore();
                }
                pipe.query_async::<()>(&mut manager.clone())
                    .await
                    .map_err(|e| format!("cannot persist payments: {e}"))
            }
            Store::Memory(store) => {
                let mut store = store.lock().unwrap_or_else(|e| e.into_inner());
                for p in batch {
                    if store.ids.insert(p.correlation_id) {
                        store.by_time[p.processor as usize]
                            .entry(p.requested_at_ms)
                            .or_default()
                            .push(p.amount_cents);
                    }
                }
                Ok(())
            }
        }
    }

    /// Totals per processor (default, fallback) of the payments requested inside `window`.
    ///
    /// # Errors
    ///
    /// The Redis error.
    pub async fn totals(&self, window: Window) -> Result<[StoreTotals; 2], String> {
        match self {
            Store::Redis(manager) => {
                let reply: Vec<i64> = redis::Script::new(SUM_SCRIPT)
                    .key(key(ProcessorName::Default))
                    .key(key(ProcessorName::Fallback))
                    .arg(window.from_ms)
                    .arg(window.to_ms)
                    .invoke_async(&mut manager.clone())
                    .await
                    .map_err(|e| format!("cannot read payments: {e}"))?;
                let at = |i: usize| reply.get(i).copied().unwrap_or(0);
                Ok([
                    StoreTotals {
                        count: at(0) as u64,
                        cents: at(1),
                    },
                    StoreTotals {
                        count: at(2) as u64,
                        cents: at(3),
                    },
                ])
            }
            Store::Memory(store) => {
                let store = store.lock().unwrap_or_else(|e| e.into_inner());
                let sum = |i: usize| {
                    store.by_time[i]
                        .range(window.from_ms..=window.to_ms)
                        .flat_map(|(_, amounts)| amounts)
                        .fold(StoreTotals::default(), |t, cents| StoreTotals {
                            count: t.count + 1,
                            cents: t.cents + cents,
                        })
                };
                Ok([sum(0), sum(1)])
            }
        }
    }

    /// Deletes every payment.
    ///
    /// # Errors
    ///
    /// The Redis error.
    pub async fn purge(&self) -> Result<(), String> {
        match self {
            Store::Redis(manager) => redis::cmd("DEL")
                .arg(key(ProcessorName::Default))
                .arg(key(ProcessorName::Fallback))
                .query_async::<()>(&mut manager.clone())
                .await
                .map_err(|e| format!("cannot purge payments: {e}")),
            Store::Memory(store) => {
                *store.lock().unwrap_or_else(|e| e.into_inner()) = MemoryStore::default();
                Ok(())
            }
        }
    }
}
