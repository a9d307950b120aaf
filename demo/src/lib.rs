//! The payments demo: the use case reactive-lock exists for, end to end.
//!
//! Three programs share this library:
//!
//! * `payments` ([`service`]): the Rinha de Backend 2025 payments API. Several instances accept
//!   payments, forward them to two payment processors and persist what the processors
//!   accepted in a shared store, in batches; `GET /payments-summary` on any instance answers
//!   exactly what the processors accepted in a window, because it waits — through
//!   reactive-lock — until no instance has a payment for that window in flight or unpersisted.
//! * `processor` ([`processor`]): the Rinha's payment processor, with its admin API (delay,
//!   failure, token, summary, purge) and its rate-limited health check.
//! * `load` ([`load`]): the Rinha's load test: ramping virtual users, the processors' stages,
//!   a consistency check every 10 s, one JSON object of results.
//!
//! `demo/run.sh` runs them together (see the README's "A real service: the payments demo").

pub mod load;
pub mod money;
pub mod processor;
pub mod service;
pub mod timestamp;
pub mod wire;
